"""Prompt distillation: the student without the passage matches the teacher with it (the paper's Eq. 1)."""

from pd.train.methods.registry import Method, register


@register
class PromptDistillation(Method):
    name = "pd"
    label = "Prompt Distillation"
    order = 10
    distils = True
    paper = {"answer_temperature": 1.5}

    def examples(self, cfg, tokens, rows, dataset):
        """Teacher and student views of each answer (the passage in the teacher's prompt only)."""
        from pd.train.sequences import pd_examples

        return pd_examples(rows, dataset, tokens, cfg.limits())
