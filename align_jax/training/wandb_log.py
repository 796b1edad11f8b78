"""Optional Weights & Biases logging, `config.wandb`: off by default; `pip install -e ".[wandb]"`.

With `config.wandb.enabled`, process 0 starts a W&B run with `dir=workdir` (its files go to
`workdir/wandb/`) and the resolved config (what `config.json` holds), logs every metrics
record at its step under its `metrics.jsonl` names, and the samples online RL logs
(`samples.jsonl`) as one table, `samples`, that grows by a row per completion: step,
prompt, completion, total and `reward/<name>` per reward function (`sample_rows`).

Resume: the W&B run id is kept in `workdir/wandb/run_id`; a run resuming from a checkpoint
continues that W&B run (`resume="allow"`), a fresh start (step 0) begins a new one. The run
finishes with the loop: exit code 0, 1 after an error, 128 + signal after an interrupt
(marked preempting). `wandb` is imported only when enabled.
"""

from __future__ import annotations

import logging
import os
import secrets
import string

import jax

from align_jax.training.errors import Interrupted, TrainingError

log = logging.getLogger("align_jax")

MODES = ("online", "offline")
INSTALL = 'pip install -e ".[wandb]"'
ID_CHARS = string.ascii_lowercase + string.digits  # of the run ids made here (as W&B makes)


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise TrainingError(
            f"config.wandb.enabled=True but the wandb package is not installed: {INSTALL}"
        ) from None
    return wandb


def check(settings) -> None:
    """Before anything slow: with `settings` (config.wandb) on, process 0 can import wandb
    and the mode is one W&B knows; errors are one line naming the key."""
    if not settings.enabled or jax.process_index() != 0:
        return
    if settings.mode not in MODES:
        raise ValueError(
            f"unknown config.wandb.mode={settings.mode!r}; valid values: {', '.join(MODES)}"
        )
    _import_wandb()


def start(settings, config_dict: dict, workdir: str, start_step: int) -> WandbRun | None:
    """The W&B run of this training run (process 0, `settings.enabled`), else None."""
    if not settings.enabled or jax.process_index() != 0:
        return None
    check(settings)
    return WandbRun(settings, config_dict, workdir, start_step)


def sample_rows(records: list[dict]) -> tuple[list[str], list[list]]:
    """(columns, rows) of samples.jsonl records: a row per completion, with its step, prompt,
    completion, total reward and each reward function's value (None where it does not
    apply)."""
    names = list(dict.fromkeys(n for r in records for n in r["rewards"]))
    columns = ["step", "prompt", "completion", "total", *(f"reward/{n}" for n in names)]
    rows = []
    for r in records:
        for i, text in enumerate(r["completions"]):
            rewards = [r["rewards"][n][i] if n in r["rewards"] else None for n in names]
            rows.append([r["step"], r["prompt"], text, r["total"][i], *rewards])
    return columns, rows


class WandbRun:
    def __init__(self, settings, config_dict: dict, workdir: str, start_step: int):
        wandb = _import_wandb()
        self._wandb = wandb
        self._table = None
        folder = os.path.join(workdir, "wandb")
        os.makedirs(folder, exist_ok=True)
        id_path = os.path.join(folder, "run_id")
        run_id = None
        if start_step > 0 and os.path.exists(id_path):
            with open(id_path) as f:
                run_id = f.read().strip() or None
        run_id = run_id or "".join(secrets.choice(ID_CHARS) for _ in range(8))
        with open(id_path, "w") as f:
            f.write(run_id + "\n")
        tags = [t.strip() for t in settings.tags.split(",") if t.strip()]
        try:
            self.run = wandb.init(
                project=settings.project,
                entity=settings.entity or None,
                name=settings.name or os.path.basename(os.path.normpath(os.path.abspath(workdir))),
                tags=tags or None,
                mode=settings.mode,
                id=run_id,
                resume="allow",
                dir=workdir,
                config=config_dict,
            )
        except wandb.errors.Error as e:
            reason = " ".join(str(e).split())
            raise TrainingError(
                f"config.wandb: W&B could not start the run: {reason} "
                "(`wandb login` first, or set config.wandb.mode=offline)"
            ) from None
        log.info("W&B run %s (%s) in %s", run_id, settings.mode, folder)

    def log(self, step: int, metrics: dict) -> None:
        self.run.log(metrics, step=step)

    def log_samples(self, step: int, records: list[dict]) -> None:
        columns, rows = sample_rows(records)
        if self._table is None or self._table.columns != columns:
            self._table = self._wandb.Table(columns=columns, log_mode="INCREMENTAL")
        for row in rows:
            self._table.add_data(*row)
        self.run.log({"samples": self._table}, step=step)

    def finish(self, error: BaseException | None = None) -> None:
        if error is None:
            code = 0
        elif isinstance(error, Interrupted):
            self.run.mark_preempting()
            code = 128 + error.signum
        else:
            code = 1
        try:
            self.run.finish(exit_code=code)
        except Exception as e:  # the run's own outcome (and error) matters more
            log.warning("W&B run did not finish cleanly: %s", e)
