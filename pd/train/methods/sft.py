"""Supervised fine-tuning: cross-entropy on the expert's answers (sampled at T = 0.25)."""

from pd.train.methods.registry import Method, register


@register
class SupervisedFineTuning(Method):
    name = "sft"
    label = "Supervised Fine-Tuning"
    order = 40
    paper = {"answer_temperature": 0.25}

    def examples(self, cfg, tokens, rows, dataset):
        """The student's view of each answer: question in, answer tokens as targets."""
        from pd.train.sequences import sft_examples

        return sft_examples(rows, dataset, tokens, cfg.limits())
