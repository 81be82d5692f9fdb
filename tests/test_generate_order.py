"""The transformers backend batches prompts by length and returns results in the caller's order."""

from __future__ import annotations

from pd.generate.base import SamplingParams
from pd.generate.transformers_backend import TransformersGenerator

WORDS = "the river ran past the old mill where seven quiet workers counted grain each long autumn evening".split()


class RecordingGenerator(TransformersGenerator):
    """The real backend, noting the prompt lengths of every batch it decodes."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.batches: list[list[int]] = []

    def _generate_batch(self, prompts, seeds, params, conts):
        self.batches.append([len(p) for p in prompts])
        return super()._generate_batch(prompts, seeds, params, conts)


def test_prompts_are_batched_by_length_and_outputs_keep_the_input_order(tiny_llama):
    # Lengths 3, 15, 1, 9, 6 words: the input order is not sorted either way.
    convs = [[{"role": "user", "content": " ".join(WORDS[:n])}] for n in (3, 15, 1, 9, 6)]
    gen = RecordingGenerator(tiny_llama.spec, progress=False, batch_size=2)
    p = SamplingParams(temperature=0, max_new_tokens=6)
    out = gen.generate(convs, p)
    lengths = [len(tiny_llama.tokenizer.encode(gen.prompt(c), add_special_tokens=False)) for c in convs]
    assert len(set(lengths)) == len(convs)
    # Batches were taken longest first, so each holds neighbours in length.
    assert gen.batches == [sorted(lengths, reverse=True)[i:i + 2] for i in range(0, 5, 2)]
    # Each output is the one its own conversation gives when generated alone.
    for conv, o in zip(convs, out):
        alone = gen.generate([conv], p)[0][0]
        assert o[0].token_ids == alone.token_ids and len(o) == 1
