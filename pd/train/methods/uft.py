"""Unsupervised fine-tuning: next-token loss on the raw passages in overlapping chunks."""

from pd.train.methods.registry import Method, register


@register
class UnsupervisedFineTuning(Method):
    name = "uft"
    label = "Unsupervised Fine-Tuning"
    order = 60
    answers = None
    paper = {"training": {"lr": 5e-5, "epochs": 3}}

    def examples(self, cfg, tokens, rows, dataset):
        """Overlapping chunks of every passage (``uft_chunk_tokens``, ``uft_overlap``)."""
        from pd.train.sequences import uft_examples

        return uft_examples(dataset, tokens, chunk_tokens=cfg.uft_chunk_tokens, overlap=cfg.uft_overlap)
