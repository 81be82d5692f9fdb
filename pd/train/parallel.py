"""How the training processes work together: one process, DDP, or FSDP, behind one object.

The loop talks to a :class:`Processes` object and never asks which kind it has:

* :class:`Processes`: one process, or several under DDP through ``accelerate`` (each
  holds the whole model; gradients are averaged by an all-reduce);
* :class:`ShardedProcesses`: several processes under FSDP2 (:mod:`pd.train.fsdp`): each
  holds a shard of the model, the gradients and the optimizer state.

Either way each process takes its own rows of the global batch (``batch_size`` is the
global batch; :mod:`pd.train.fit` says how it is dealt out), and the files saved are the
same: every process takes part in gathering the full adapter and optimizer state
(:meth:`Processes.gather_adapter`, :meth:`Processes.gather_optimizer`), and only the main
process writes them.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch

from pd.train import fsdp
from pd.train.lora import load_adapter_state

log = logging.getLogger("pd.train")


def start_processes(device: str | None = None, *, log_with: list[str] | None = None,
                    project_dir=None) -> "Processes":
    """The process group of this training run, set up by ``accelerate``; :meth:`Processes.with_parallel`
    then chooses how they share the model.

    Args:
        device: "cpu" to train on the CPU; None: a GPU when there is one.
        log_with: trackers for the accelerator (``training.log_with``, :mod:`pd.train.trackers`).
        project_dir: where those trackers log.

    Returns:
        A :class:`Processes` (each holding the whole model).
    """
    from accelerate import Accelerator

    # On a machine without GPUs, accelerate only sets up multi-process (gloo) DDP when told cpu=True.
    accelerator = Accelerator(cpu=device == "cpu" or (device is None and not torch.cuda.is_available()),
                              log_with=log_with or None, project_dir=project_dir)
    return Processes(accelerator)


class Processes:
    """One process, or several replicating the model under DDP.

    Args:
        accelerator: the run's ``accelerate.Accelerator``.
    """

    sharded = False

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.device = accelerator.device
        self.is_main = accelerator.is_main_process

    def with_parallel(self, parallel: str) -> Processes:
        """These processes, sharing the model as ``parallel`` says.

        Args:
            parallel: "ddp" (replicate the model) or "fsdp" (shard it), as :mod:`pd.train.fit` resolved it.

        Returns:
            A :class:`ShardedProcesses` over the same accelerator for "fsdp" on several processes, else
            these (FSDP on one process has nothing to shard: it trains unsharded, with a warning).
        """
        if parallel == "fsdp" and self.world == 1:
            log.warning("training.parallel: fsdp with one process: nothing to shard, training unsharded")
        if parallel == "fsdp" and self.world > 1:
            return ShardedProcesses(self.accelerator)
        return self

    def smallest(self, value: float) -> float:
        """The smallest of every process's ``value`` (a collective when there are several processes).

        Args:
            value: this process's value (e.g. its GPU's memory).

        Returns:
            The minimum over the processes, so that choices made from it agree on every process.
        """
        if self.world == 1:
            return value
        gathered = self.accelerator.gather(torch.tensor([float(value)], device=self.device, dtype=torch.float64))
        return float(gathered.min())

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """Distribute a model before its optimizer exists (a no-op here; FSDP shards it).

        Args:
            model: the student with its adapter, or a separate teacher.

        Returns:
            The model to build the optimizer on (the same object here).
        """
        return model

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """Wrap the model (DDP when several processes) and the optimizer, after the optimizer exists.

        Args:
            model: the placed model.
            optimizer: its optimizer.

        Returns:
            (model, optimizer) to train with.
        """
        return self.accelerator.prepare(model, optimizer)

    @contextlib.contextmanager
    def micro_batch(self, model: torch.nn.Module, last: bool) -> Iterator[None]:
        """Context for one micro-batch's forward and backward.

        Args:
            model: the prepared model.
            last: whether this is the optimizer step's last micro-batch: only then are the
                gradients synchronised between processes.

        Returns:
            A context manager.
        """
        if last or self.world == 1:
            yield
        else:
            with self.accelerator.no_sync(model):
                yield

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate a loss.

        Args:
            loss: scalar tensor with gradient.
        """
        self.accelerator.backward(loss)

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        """Clip the gradient norm over all processes' gradients.

        Args:
            params: the trainable parameters.
            max_norm: the largest L2 norm allowed.

        Returns:
            The global L2 norm before clipping.
        """
        return float(self.accelerator.clip_grad_norm_(params, max_norm))

    def agree(self, value: float) -> float:
        """One value for decisions every process must take alike (timed snapshots, the time budget).

        Args:
            value: this process's value (e.g. elapsed seconds).

        Returns:
            The value itself here; rank 0's value on every rank when sharded (the
            gathers that follow such a decision are collective).
        """
        return value

    def agree_any(self, *flags: bool) -> tuple[bool, ...]:
        """Yes/no decisions every process must take alike (a checkpoint by wall clock, a stop on SIGTERM).

        Args:
            *flags: this process's answers.

        Returns:
            Each flag true on every process when it is true on any (a max all-reduce; with one
            process, the flags themselves).
        """
        if self.world == 1:
            return tuple(bool(f) for f in flags)
        import torch.distributed as dist

        t = torch.tensor([float(bool(f)) for f in flags], dtype=torch.float32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())

    def reduce_metrics(self, totals: dict[str, float], counts: dict[str, float], tokens: int,
                       answer_tokens: int) -> dict:
        """Metrics averaged over every process's rows, token counts summed over processes.

        Args:
            totals: per metric, the sum over this process's rows of the metric (a micro-batch's mean times its
                rows); every process passes the same keys.
            counts: per metric, the rows ``totals`` sums over.
            tokens: tokens this process ran through the models in the step.
            answer_tokens: answer tokens it trained on.

        Returns:
            ``{"metrics": {name: total / rows over all processes}, "tokens": sum, "answer_tokens": sum}``; a
            metric without rows is left out.
        """
        keys = sorted(totals)
        vals = [totals[k] for k in keys] + [counts[k] for k in keys] + [float(tokens), float(answer_tokens)]
        if self.world > 1:
            reduced = self.accelerator.reduce(torch.tensor(vals, device=self.device, dtype=torch.float64),
                                              reduction="sum")
            vals = reduced.tolist()
        n = len(keys)
        metrics = {k: vals[i] / vals[n + i] for i, k in enumerate(keys) if vals[n + i] > 0}
        return {"metrics": metrics, "tokens": int(vals[-2]), "answer_tokens": int(vals[-1])}

    def gather_adapter(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The full LoRA tensors for saving; every process calls it (a collective when sharded).

        Args:
            model: the prepared model.

        Returns:
            None here (the model holds its tensors whole: save from the model); when
            sharded, the model's LoRA state dict entries gathered to full size on the CPU.
        """
        return None

    def gather_optimizer(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's full state dict for saving; every process calls it.

        Args:
            optimizer: the prepared optimizer.

        Returns:
            Its state dict, state tensors at full size (gathered when sharded).
        """
        return optimizer.state_dict()

    def load_adapter(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load saved adapter tensors into the model (each process keeps its shard when sharded).

        Args:
            model: the prepared model.
            state: full-size tensors under peft's saved names, on the model's device.
        """
        load_adapter_state(model, state)

    def load_optimizer(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load a saved optimizer state dict (each process keeps its shard when sharded).

        Args:
            optimizer: the prepared optimizer.
            state: a state dict as :meth:`gather_optimizer` returns it.
        """
        optimizer.load_state_dict(state)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        self.accelerator.wait_for_everyone()


class ShardedProcesses(Processes):
    """Several processes, each holding a shard of the model (FSDP2, :mod:`pd.train.fsdp`).

    The methods do what :class:`Processes` documents, on sharded tensors.
    """

    sharded = True

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        return fsdp.shard_model(model, self.device)

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        return model, optimizer

    @contextlib.contextmanager
    def micro_batch(self, model: torch.nn.Module, last: bool) -> Iterator[None]:
        fsdp.gradient_sync(model, last)
        yield

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        return fsdp.clip_grad_norm(params, max_norm)

    def agree(self, value: float) -> float:
        return fsdp.agree(value, self.device)

    def gather_adapter(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return fsdp.full_adapter_state(model)

    def gather_optimizer(self, optimizer: torch.optim.Optimizer) -> dict:
        return fsdp.full_optimizer_state(optimizer)

    def load_adapter(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        fsdp.load_full_adapter_state(model, state)

    def load_optimizer(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        fsdp.load_full_optimizer_state(optimizer, state)
