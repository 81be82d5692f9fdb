"""The base model without an adapter: the reference row of every table."""

from pd.train.methods.registry import Method, register


@register
class BaseModel(Method):
    name = "base"
    label = "Base model"
    order = 90
    trains = False
    answers = None
