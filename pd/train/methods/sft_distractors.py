"""SFT with distractors (RAFT-like): chain-of-thought answers with the gold passage among distractors."""

from pd.train.methods.registry import Method, register


@register
class SFTWithDistractors(Method):
    name = "sft_distractors"
    label = "SFT w/ Distractors"
    order = 50
    answers = "cot"
    paper = {"answer_temperature": 0.25}

    def examples(self, cfg, tokens, rows, dataset):
        """Distractor passages beside the gold one (left out with ``gold_drop_prob``), seeded."""
        from pd.train.sequences import distractor_examples

        return distractor_examples(rows, dataset, tokens, cfg.limits(), seed=cfg.seed, distractors=cfg.distractors,
                                   gold_drop_prob=cfg.gold_drop_prob)
