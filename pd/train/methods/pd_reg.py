"""Regularised prompt distillation: half of each batch is instruction data whose teacher is the base
model on the same sequence (the paper's Eq. 2)."""

from pd.errors import ConfigError
from pd.train.methods.pd import PromptDistillation
from pd.train.methods.registry import register

TULU3 = "allenai/tulu-3-sft-mixture"


@register
class RegularisedPromptDistillation(PromptDistillation):
    name = "pd_reg"
    label = "Prompt Distillation + Tülu 3"
    order = 20
    regularised = True

    def check(self, cfg) -> None:
        """Each batch must hold at least one instruction row and one passage row."""
        if not 0.0 < cfg.reg_fraction < 1.0:
            raise ConfigError(f"training.reg_fraction must lie in (0, 1) for pd_reg, got {cfg.reg_fraction}")
        n_reg = round(cfg.batch_size * cfg.reg_fraction)
        if not 1 <= n_reg < cfg.batch_size:
            raise ConfigError(f"pd_reg: batch_size {cfg.batch_size} x reg_fraction {cfg.reg_fraction} must leave "
                              "at least one instruction row and one passage row per batch (use batch_size >= 2)")

    def data_files(self, training: dict) -> list[str]:
        """The local instruction data (``training.reg_data``): its content is part of the adapter's identity."""
        return [training["reg_data"]]

    def hub_datasets(self, training: dict) -> dict[str, tuple[str, str | None, str]]:
        """Tülu 3's training split when the instruction data comes from the hub."""
        return {"tulu3": (TULU3, None, "train")} if training.get("reg_data") == "tulu3" else {}
