"""Flower-style NumPy clients as tasks, with no dependency on Flower.

Code written for Flower's `NumPyClient` trains in a Consortium run through this adapter:

    # mypkg/task.py
    from consortium.learning.flower import numpy_client_task
    from consortium.learning.loaders import table_data

    task = numpy_client_task(
        "logreg",
        client_fn=lambda examples: LogRegClient(examples.x, examples.y),
        data=table_data,  # or any data(node) -> (train, test) Examples, with record ids
        initial_parameters=lambda rng: [np.zeros((10, 64)), np.zeros(10)],
    )

The client is any object with Flower's `NumPyClient` methods and return values:

    get_parameters(config) -> list[np.ndarray]
    fit(parameters, config) -> (parameters, num_examples, metrics)
    evaluate(parameters, config) -> (loss, num_examples, metrics)

(`config` and `metrics` are `dict[str, bool | bytes | float | int | str]`). How it maps:

- **Data and consent.** The node loads `data(node)` as for any task: `Examples` with a record id
  per example. Each round the adapter builds a fresh client with `client_fn(examples)` on the
  records that round's consent selection allows, and nothing else, then calls `fit`; so a
  subject's withdrawal reaches the client at the next round. `client_fn` must train and evaluate
  on the examples it is given only (like any task's code, the node cannot check what else it
  reads).
- **Parameters.** The run's model is the client's list of arrays (as float32: what the
  consortium aggregates), held by `ClientParameters` (parameters `array_0000`, `array_0001`, …
  in list order: what `model export` writes). `initial_parameters` gives the starting list,
  the same on every node: a list, or a function of a `numpy.random.Generator` seeded with the
  run's seed. `fit` must return arrays of the same shapes; NaN or infinity is refused.
- **Weighting.** `num_examples` from `fit` and `evaluate` is ignored: the node weighs its update
  by its own count of consented records (a client's claim is not evidence).
- **Metrics** from `fit` and `evaluate` stay on the node (local metrics, `model evaluate`):
  they are computed from the node's data and never published (docs/architecture.md, "Per-node
  figures that may be published"). Only numbers are kept (bools, text and bytes dropped).
- **fit's config**: `{"epochs", "batch_size", "lr", "seed", "proximal_mu"}` from the run (the
  seed differs per round; FedProx's term is the client's to apply); `evaluate`'s is empty.
- **get_parameters** is not called: Flower asks one client for the starting parameters when
  its server has none; here there is no server, and every node must start from the same
  parameters before any data is loaded, so `initial_parameters` (Flower's strategies take one
  too) gives them.
- **Privacy.** Training happens inside the client, outside PyTorch, so record-level DP (DP-SGD)
  cannot apply: a run with record-level DP is refused for such a task (`framework = "numpy"`,
  rule `task-dp`). Client-level DP and secure aggregation work on its parameters as on any
  model's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from consortium.learning.adapter import Weights
from consortium.learning.task import Examples, NodeContext, Task, TaskError
from consortium.learning.train import TrainConfig, TrainResult

log = logging.getLogger("consortium.learning")

#: Flower's `Scalar` and `Config`/`Metrics`.
Scalar = bool | bytes | float | int | str
NDArrays = list[npt.NDArray[Any]]

#: At most this many arrays (their names are numbered with four digits, so they sort in order).
MAX_ARRAYS = 10_000


class NumPyClientLike(Protocol):
    """The methods of Flower's `flwr.client.NumPyClient` that the adapter calls."""

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays: ...

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]: ...

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]: ...


ClientFn = Callable[[Examples], NumPyClientLike]
InitialParameters = Sequence[npt.NDArray[Any]] | Callable[[np.random.Generator], Sequence[Any]]


class ClientParameters(nn.Module):
    """A NumPy client's list of arrays as a module's float32 parameters (`array_0000`, …),
    which nothing in PyTorch trains: the client's `fit` does."""

    def __init__(self, arrays: Sequence[npt.NDArray[np.float32]]) -> None:
        super().__init__()
        for i, a in enumerate(arrays):
            self.register_parameter(
                _name(i), nn.Parameter(torch.from_numpy(a.copy()), requires_grad=False)
            )

    def arrays(self) -> list[npt.NDArray[np.float32]]:
        """The arrays, in the client's order (copies)."""
        return [p.detach().cpu().numpy().copy() for p in self.parameters()]

    def load(self, arrays: Sequence[npt.NDArray[np.float32]]) -> None:
        with torch.no_grad():
            for p, a in zip(self.parameters(), arrays, strict=True):
                p.copy_(torch.from_numpy(a))


def _name(i: int) -> str:
    return f"array_{i:04d}"


def _checked(
    task: str, what: str, arrays: Any, like: Sequence[npt.NDArray[np.float32]] | None = None
) -> list[npt.NDArray[np.float32]]:
    """`arrays` as float32 NumPy arrays, or TaskError saying what is wrong (and, with `like`,
    which array does not have the model's shape)."""
    if not isinstance(arrays, list | tuple) or not arrays:
        raise TaskError(f"task {task!r}: {what} must be a non-empty list of NumPy arrays")
    if len(arrays) > MAX_ARRAYS:
        raise TaskError(f"task {task!r}: {what} has {len(arrays)} arrays, at most {MAX_ARRAYS}")
    if like is not None and len(arrays) != len(like):
        raise TaskError(f"task {task!r}: {what} has {len(arrays)} arrays, the model {len(like)}")
    out = []
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu":
            kind = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise TaskError(f"task {task!r}: {what}: array {i} is {kind}, not a numeric array")
        with np.errstate(over="ignore"):
            f = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(f).all():
            raise TaskError(f"task {task!r}: {what}: array {i} holds NaN or infinity (in float32)")
        if like is not None and f.shape != like[i].shape:
            raise TaskError(
                f"task {task!r}: {what}: array {i} has shape {f.shape}, the model {like[i].shape}"
            )
        out.append(f)
    return out


def _numbers(metrics: Any) -> dict[str, float]:
    """The numeric entries of a client's metrics (Flower's may hold bools, text, bytes)."""
    if not isinstance(metrics, Mapping):
        return {}
    return {
        str(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


class NumPyClientAdapter:
    """The `model`, `train` and `evaluate` of a task whose training is a NumPy client's."""

    def __init__(self, name: str, client_fn: ClientFn, initial: InitialParameters) -> None:
        self.name, self.client_fn, self.initial = name, client_fn, initial

    def _client(self, examples: Examples) -> NumPyClientLike:
        try:
            client = self.client_fn(examples)
        except Exception as exc:
            raise TaskError(f"task {self.name!r}: client_fn() failed: {exc!r}") from exc
        missing = [m for m in ("fit", "evaluate") if not callable(getattr(client, m, None))]
        if missing:
            raise TaskError(
                f"task {self.name!r}: client_fn() returned a {type(client).__name__} without "
                f"{' and '.join(missing)}(parameters, config) (Flower's NumPyClient methods)"
            )
        return client

    def model(self) -> nn.Module:
        """The initial parameters, under the run's seed (`task.build_model` seeds torch with
        it; the numpy Generator handed to `initial_parameters` is seeded from that)."""
        if callable(self.initial):
            rng = np.random.default_rng(torch.initial_seed())
            try:
                arrays = self.initial(rng)
            except Exception as exc:
                why = f"initial_parameters() failed: {exc!r}"
                raise TaskError(f"task {self.name!r}: {why}") from exc
        else:
            arrays = self.initial
        return ClientParameters(_checked(self.name, "initial_parameters", list(arrays)))

    def train(
        self, model: nn.Module, examples: Examples, cfg: TrainConfig, weights: Weights | None
    ) -> TrainResult:
        """One `fit` on `examples` (the consented records); the update replaces the model's
        parameters. The client's `num_examples` is ignored (the node counts its records)."""
        params = _parameters(model)
        like = params.arrays()
        client = self._client(examples)
        config: dict[str, Scalar] = {
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "seed": cfg.seed,
            "proximal_mu": cfg.proximal_mu,
        }
        try:
            out = client.fit([a.copy() for a in like], config)
        except Exception as exc:
            raise TaskError(f"task {self.name!r}: fit() failed: {exc!r}") from exc
        if not isinstance(out, tuple) or len(out) != 3:
            raise TaskError(
                f"task {self.name!r}: fit() must return (parameters, num_examples, metrics)"
            )
        new = _checked(self.name, "fit() parameters", out[0], like)
        metrics = _numbers(out[2])
        params.load(new)
        loss = metrics.get("loss")
        if loss is None:  # the client reports none: its evaluation on what it trained on
            loss = self._evaluate(client, new)[0]
        log.debug("task %s: fit metrics (kept on this node): %s", self.name, metrics)
        return TrainResult(len(examples), float(loss), metrics)

    def evaluate(self, model: nn.Module, examples: Examples) -> dict[str, float]:
        """`evaluate` of a client built on `examples`: {"loss": …, and its numeric metrics}."""
        client = self._client(examples)
        loss, metrics = self._evaluate(client, _parameters(model).arrays())
        return {**metrics, "loss": loss}

    def _evaluate(
        self, client: NumPyClientLike, arrays: list[npt.NDArray[np.float32]]
    ) -> tuple[float, dict[str, float]]:
        try:
            out = client.evaluate([a.copy() for a in arrays], {})
        except Exception as exc:
            raise TaskError(f"task {self.name!r}: evaluate() failed: {exc!r}") from exc
        if not isinstance(out, tuple) or len(out) != 3:
            raise TaskError(
                f"task {self.name!r}: evaluate() must return (loss, num_examples, metrics)"
            )
        loss = out[0]
        if not isinstance(loss, int | float | np.floating) or not math.isfinite(float(loss)):
            raise TaskError(f"task {self.name!r}: evaluate() returned loss {loss!r}, not a number")
        return float(loss), _numbers(out[2])


def _parameters(model: nn.Module) -> ClientParameters:
    if not isinstance(model, ClientParameters):
        raise TaskError(f"a NumPy client task's model is its parameters, not a {type(model)}")
    return model


def numpy_client_task(
    name: str,
    client_fn: ClientFn,
    data: Callable[[NodeContext], tuple[Examples, Examples]],
    initial_parameters: InitialParameters,
) -> Task:
    """A task that trains with Flower-style NumPy clients (see the module's docstring):
    `client_fn(examples)` builds a client on the examples it may use, `data(node)` loads the
    node's (train, test) examples with record ids, `initial_parameters` is the starting list of
    arrays (or a function of a seeded `numpy.random.Generator` returning it)."""
    adapter = NumPyClientAdapter(name, client_fn, initial_parameters)
    return Task(
        name,
        model=adapter.model,
        data=data,
        train=adapter.train,
        evaluate=adapter.evaluate,
        framework="numpy",
    )
