"""Several processes (hosts) training one model: ``jax.distributed`` and data sharding.

Every process runs the same ``train.py`` command. After
:func:`initialize`, ``jax.devices()`` lists the devices of all processes and
the data-parallel mesh of :mod:`unet_jax.parallel` spans them; each process
reads only its own share of every global batch (:func:`shard_dataset`) and
``jax.make_array_from_process_local_data`` assembles the global batch
(``parallel.shard_batch``). Orbax saves and restores the replicated train
state collectively (every process calls it; the primary writes the arrays,
each process writes its data-iterator position); only process 0 writes
``metrics.jsonl``, TensorBoard files, ``curves.png`` and ``config.json``.
Validation is split between the processes (:func:`map_strided`).

Launch on two hosts (host A reachable as ``hostA`` from host B)::

  # host A                                    # host B
  python train.py ... \\                       python train.py ... \\
    --coordinator_address=hostA:1234 \\          --coordinator_address=hostA:1234 \\
    --num_processes=2 --process_id=0            --num_processes=2 --process_id=1

With none of the three flags, a cluster environment that JAX recognises
(SLURM with several tasks, Open MPI, or ``JAX_COORDINATOR_ADDRESS`` set) is
initialised from its own variables; otherwise nothing is initialised and the
run is the ordinary single-process one.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Callable, Sequence

import grain
import jax
import numpy as np

from unet_jax.errors import UserInputError

log = logging.getLogger(__name__)


def cluster_detected(environ: dict[str, str] | None = None) -> bool:
  """True in a multi-process job that ``jax.distributed.initialize()`` configures itself."""
  env = os.environ if environ is None else environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
  return all(k in env for k in slurm) and int(env.get("SLURM_NTASKS", "1")) > 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins the processes of a multi-process run, or does nothing for a single one.

  Must run before anything else touches JAX's devices.

  Args:
    coordinator_address: ``host:port`` of process 0, reachable from all.
    num_processes: number of processes.
    process_id: this process's index in ``[0, num_processes)``.
  Returns:
    True if ``jax.distributed`` was initialised.
  Raises:
    UserInputError: if only some of the three are given or they are out of range.
  """
  if not _check_flags(coordinator_address, num_processes, process_id):
    return False
  # XLA:CPU needs a collectives library for cross-process all-reduce; gloo
  # talks TCP. Other backends ignore this option.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  # JAX gives each process of a SLURM job one device (SLURM_LOCALID) unless
  # JAX_LOCAL_DEVICE_IDS says otherwise: the count here shows which it was.
  log.info("process %d of %d: %d local devices (%s), %d in all", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.local_devices()[0].device_kind,
           jax.device_count())
  return True


def _check_flags(coordinator_address: str | None, num_processes: int | None,
                 process_id: int | None, environ: dict[str, str] | None = None) -> bool:
  """True for a multi-process launch (the flags, or a cluster JAX detects); checks the flags."""
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise UserInputError("give all three of --coordinator_address, --num_processes and "
                         "--process_id (or none, on a cluster that JAX detects)")
  if all(given) and not 0 <= process_id < num_processes:
    raise UserInputError(f"--process_id={process_id} must be in [0, {num_processes})")
  return all(given) or cluster_detected(environ)


def launch_index(coordinator_address: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None,
                 environ: dict[str, str] | None = None) -> int:
  """This process's index in a multi-process launch, without joining it; 0 for one process.

  For programs that run in one process only (``evaluate.py``): the others
  learn that they have nothing to do before they touch a device. The flags as
  for :func:`initialize`; else the cluster's rank (SLURM, Open MPI).
  """
  env = os.environ if environ is None else environ
  if not _check_flags(coordinator_address, num_processes, process_id, env):
    return 0
  if process_id is not None:
    return process_id
  for rank in ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
    if env.get(rank, "").isdigit():
      return int(env[rank])
  return 0


def is_primary() -> bool:
  """True in the process that writes logs, plots and the run's config (process 0)."""
  return jax.process_index() == 0


def all_agree(ok: bool) -> bool:
  """True if ``ok`` is true in every process; a collective: all processes must call it.

  Decisions that change which programs run or what is saved (which checkpoint
  to resume from, whether to stop) must be the same everywhere, or the
  processes wait for each other in different collectives until they time out.
  """
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def broadcast_ints(values: Sequence[int]) -> list[int]:
  """Process 0's ``values`` in every process (a collective: all must call it)."""
  if jax.process_count() == 1:
    return list(values)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  n = int(multihost_utils.broadcast_one_to_all(np.int32(len(values))))
  padded = np.full(max(n, 1), -1, np.int64)
  padded[:min(n, len(values))] = list(values)[:n]
  return [int(v) for v in multihost_utils.broadcast_one_to_all(padded)[:n]]


def barrier(name: str) -> None:
  """Waits until every process gets here (nothing to do for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def local_batch_size(global_batch: int, process_count: int | None = None) -> int:
  """This process's share of ``global_batch``."""
  count = jax.process_count() if process_count is None else process_count
  if global_batch % count:
    raise UserInputError(f"--config.batch_size={global_batch} must be a multiple of the "
                         f"{count} processes (each feeds an equal share)")
  return global_batch // count


class _ProcessShard(grain.MapDataset):
  """Elements of the global batches that fall to one process, in order.

  Global batch ``k`` is made of parent elements ``[k B, (k + 1) B)``; process
  ``p`` of ``P`` takes the contiguous block ``[k B + p b, k B + (p + 1) b)``
  with ``b = B / P``. The global batch assembled from the processes' blocks
  (in process order, as the data axis of the mesh runs) is therefore the same
  as the batch a single process reads, and each element keeps its parent index,
  so its random augmentation (derived from the seed and that index) is the same.
  """

  def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
    super().__init__(parent)
    self._global, self._local = global_batch, global_batch // count
    self._offset = index * self._local
    self._length = len(parent) // global_batch * self._local

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, i: int) -> int:
    k, j = divmod(i, self._local)
    return k * self._global + self._offset + j

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def _getitems(self, indices: Sequence[int]):
    return self._parent._getitems([self._parent_index(i) for i in indices])  # pylint: disable=protected-access

  def __str__(self) -> str:
    return f"_ProcessShard(block {self._offset}:{self._offset + self._local} of {self._global})"


def shard_dataset(ds: grain.MapDataset, global_batch: int, index: int | None = None,
                  count: int | None = None) -> grain.MapDataset:
  """The elements of ``ds`` that process ``index`` of ``count`` batches (see ``_ProcessShard``).

  Batch the result with ``global_batch / count``. Returns ``ds`` itself for one process.
  """
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  if count == 1:
    return ds
  local_batch_size(global_batch, count)
  return _ProcessShard(ds, global_batch, index, count)


def map_strided(fn: Callable[[Sequence[int]], Sequence[Any]], total: int) -> list[Any]:
  """Items ``0 .. total - 1`` split between the processes; a collective: all must call it.

  Process ``p`` of ``P`` calls ``fn`` once with its indices ``p, p + P, ...``;
  ``fn`` returns one picklable result per index (e.g. the tens to hundreds of
  numbers an image adds to a validation score). The results are pickled, gathered
  with ``process_allgather`` (as bytes padded to the longest process's) and
  returned to every process in item order.

  If ``fn`` raises in any process (a second Ctrl-C included), every process
  raises after the gather, instead of the others waiting in it: the process
  where it happened re-raises its own exception, the others a copy of the
  first one (or a ``RuntimeError`` naming it where it does not pickle). So do
  the processes if they were given different ``total``.
  """
  count, index = jax.process_count(), jax.process_index()
  mine = list(range(index, total, count))
  if count == 1:
    return _checked(fn(mine), mine)
  error = None
  try:
    payload = pickle.dumps(("ok", (total, _checked(fn(mine), mine))))
  except BaseException as e:  # pylint: disable=broad-except  # re-raised below, in every process
    error = e
    try:
      payload = pickle.dumps(("error", e))
      pickle.loads(payload)
    except Exception:  # pylint: disable=broad-except
      payload = pickle.dumps(("error", RuntimeError(f"{type(e).__name__}: {e}")))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  lengths = np.asarray(multihost_utils.process_allgather(np.int32(len(payload)))).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:len(payload)] = np.frombuffer(payload, np.uint8)
  everything = np.asarray(multihost_utils.process_allgather(padded))  # [P, longest]
  gathered = [pickle.loads(everything[p, :lengths[p]].tobytes()) for p in range(count)]
  failed = [(p, value) for p, (status, value) in enumerate(gathered) if status == "error"]
  if error is not None:
    raise error
  if failed:
    p, e = failed[0]
    log.error("process %d failed: %s: %s", p, type(e).__name__, e)
    raise e
  totals = [value[0] for _, value in gathered]
  if len(set(totals)) > 1:
    raise ValueError(f"map_strided: the processes were given different totals {totals}")
  items = [None] * total
  for p, (_, (_, results)) in enumerate(gathered):
    items[p::count] = results
  return items


def _checked(results: Sequence[Any], indices: Sequence[int]) -> list[Any]:
  """``results`` as a list, if there is one per index."""
  results = list(results)
  if len(results) != len(indices):
    raise ValueError(f"map_strided: fn returned {len(results)} results for {len(indices)} items")
  return results


def local_copy(tree: Any) -> Any:
  """A pytree of replicated global arrays as arrays on this process's first device.

  Per-process work (each process's share of the validation predictions) then
  runs without cross-process collectives. Single-process arrays are returned
  unchanged.
  """
  if jax.process_count() == 1:
    return tree
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)
