"""Prompt distillation with the reverse KL, KL(student || teacher) (the paper's Table 14)."""

from pd.train.methods.pd import PromptDistillation
from pd.train.methods.registry import register


@register
class ReversePromptDistillation(PromptDistillation):
    name = "pd_reverse"
    label = "PD (reverse KL)"
    order = 30
    direction = "reverse"
