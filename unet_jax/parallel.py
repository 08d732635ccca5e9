"""Data parallelism with ``jax.jit`` and named shardings (no pmap).

One mesh axis, ``"data"``: every array of a batch is split along its leading
(batch) axis over the devices, and the train state (parameters, optimizer
state, step, rng) is replicated. The train step itself stays the ordinary pure
``(state, batch) -> (state, metrics)`` function; XLA inserts the gradient
all-reduce because the loss is a mean over the whole (global) batch.

Single host, several devices::

  mesh = parallel.make_mesh()
  step = parallel.jit_data_parallel(train_step_fn, mesh)
  state = parallel.replicate(state, mesh)
  state, metrics = step(state, parallel.shard_batch(batch, mesh))

Several hosts: call ``jax.distributed.initialize()`` in every process first;
``make_mesh()`` then spans the devices of all processes, and each process passes
its own share of the global batch to ``shard_batch`` (see docs/performance.md).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from unet_jax import layers

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with the axis ``"data"`` over ``devices`` (default: all devices)."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("make_mesh needs at least one device")
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``"data"``, the other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """The same full copy on every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places a batch (a pytree of ``[B, ...]`` arrays) with B split over the mesh.

  On one host ``batch`` is the global batch. When the mesh spans P processes
  each process passes its local share, ``[B / P, ...]``, and gets back global
  arrays of ``[B, ...]``; a mesh of this process's own devices takes the whole batch.

  Raises:
    ValueError: if the (global) batch size is not a multiple of the mesh size.
  """
  sharding = batch_sharding(mesh)
  n = mesh.devices.size
  # The processes the mesh spans, not jax.process_count(): a mesh of this
  # process's own devices (e.g. inference's) takes the whole batch here.
  processes = len({d.process_index for d in mesh.devices.flat})
  multi = processes > 1

  def put(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    global_b = x.shape[0] * processes
    if global_b % n:
      raise ValueError(f"batch size {global_b} is not a multiple of the {n} devices "
                       f"of the mesh; use a batch size divisible by {n}")
    if multi:
      return jax.make_array_from_process_local_data(sharding, np.asarray(x))
    return jax.device_put(x, sharding)

  return jax.tree_util.tree_map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of ``tree`` (params, optimizer state, ...) on all mesh devices."""
  return jax.device_put(tree, replicated_sharding(mesh))


def jit_data_parallel(step_fn: Callable[[Any, Any], tuple[Any, Any]], mesh: Mesh, *,
                      state_sharding: Any = None, donate: bool = True) -> Callable:
  """Jits a ``(state, batch) -> (state, metrics)`` step for data parallelism.

  Args:
    step_fn: pure train step; its loss must average over the batch axis.
    mesh: from ``make_mesh``.
    state_sharding: sharding (or pytree prefix of shardings) of the state;
      default: replicated.
    donate: donate the state argument (its buffers are reused for the new state).
  Returns:
    The jitted step: the batch is split over ``"data"``, the state kept as
    ``state_sharding``, metrics replicated. Compiled with
    ``layers.xla_compiler_options()`` (the fast XLA:CPU settings).
  """
  state_sharding = replicated_sharding(mesh) if state_sharding is None else state_sharding
  return jax.jit(step_fn,
                 in_shardings=(state_sharding, batch_sharding(mesh)),
                 out_shardings=(state_sharding, replicated_sharding(mesh)),
                 donate_argnums=(0,) if donate else (),
                 compiler_options=layers.xla_compiler_options() or None)
