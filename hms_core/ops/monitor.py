"""``hms status`` and ``hms monitor``: the run's status as a rich dashboard, local or over SSH."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Mapping

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from hms_core.ops import ssh
from hms_core.ops.run_status import run_status

logger = logging.getLogger(__name__)

_STATE_STYLE = {"running": "green", "done": "blue", "finished": "blue", "failed": "bold red",
                "stale": "yellow", "stopped": "yellow"}


def fetch_status(workdir: str | os.PathLike, host: str | None = None) -> dict[str, Any]:
    """:func:`hms_core.ops.run_status.run_status` of a local run, or of a remote one over SSH.

    Remotely it runs ``hms status --json`` in ``workdir`` on ``host`` (see
    :mod:`hms_core.ops.ssh`), so GPU and processes are those of the remote machine.
    """
    if host is None:
        return run_status(workdir)
    result = ssh.run_remote(host, ssh.hms_shell(workdir, ["status", "--json"]), capture=True,
                            timeout_s=60)
    if result.returncode != 0:
        raise ssh.RemoteError(f"{host}: hms status failed in {ssh.remote_dir(workdir)}: "
                              f"{result.stderr.strip() or result.stdout.strip()}")
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as err:
        raise ssh.RemoteError(f"{host}: hms status --json printed no JSON ({err}): "
                              f"{result.stdout[:200]!r}")


def print_status(workdir: str | os.PathLike, host: str | None, as_json: bool, *,
                 console: Console | None = None) -> int:
    """Print the run's status once (``hms status``); ``as_json`` prints the dict itself."""
    current = fetch_status(workdir, host)
    console = console or Console()
    if as_json:
        console.out(json.dumps(current, indent=2, default=str), highlight=False)
    else:
        console.print(render_status(current))
    return 0


def run_monitor(workdir: str | os.PathLike, host: str | None, interval_s: float, *,
                console: Console | None = None, frames: int | None = None) -> int:
    """Live dashboard, refreshed every ``interval_s`` s until Ctrl-C (``hms monitor``).

    ``frames`` stops after that many refreshes (None: until interrupted). A failed remote
    fetch is shown in the dashboard and retried at the next refresh.
    """
    console = console or Console()
    shown = 0
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while frames is None or shown < frames:
                try:
                    view = render_status(fetch_status(workdir, host))
                except ssh.RemoteError as err:
                    view = Panel(Text(str(err), style="red"), title="hms monitor")
                live.update(view, refresh=True)
                shown += 1
                if frames is None or shown < frames:
                    time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    return 0


def render_status(current: Mapping[str, Any]) -> Group:
    """The dashboard for one :func:`hms_core.ops.run_status.run_status` dict."""
    return Group(_header(current), _jobs_table(current), _gpu_view(current.get("gpu", {})))


def _header(current: Mapping[str, Any]) -> Panel:
    run, smk, cost = current.get("run", {}), current.get("snakemake", {}), current.get("cost", {})
    state = run.get("state", "unknown")
    lines = [Text.assemble(("state ", "dim"), (state, _STATE_STYLE.get(state, "")),
                           ("   elapsed ", "dim"), format_duration(run.get("elapsed_s")),
                           ("   ETA ", "dim"), format_duration(run.get("eta_s")))]
    if smk.get("total"):
        bar = Table.grid(padding=(0, 1))
        bar.add_row(Text("snakemake", style="dim"),
                    ProgressBar(total=smk["total"], completed=smk["done"], width=30),
                    f"{smk['done']} of {smk['total']} steps ({smk.get('percent') or 0:.0f}%)")
        lines.append(bar)
    elif smk.get("nothing_to_do"):
        lines.append(Text("snakemake: nothing to be done (all outputs up to date)"))
    running_rules = [f"{j['rule']}({j['wildcards']})" if j.get("wildcards") else j["rule"]
                     for j in smk.get("running", [])]
    if running_rules:
        lines.append(Text("running rules: " + ", ".join(running_rules)))
    if smk.get("failed_rules"):
        lines.append(Text("failed rules: " + ", ".join(smk["failed_rules"]), style="bold red"))
    if cost.get("per_hour"):
        text = f"cost {cost['so_far'] or 0:.2f} {cost['currency']} so far"
        if cost.get("estimated_total") is not None:
            text += f", about {cost['estimated_total']:.2f} {cost['currency']} in total"
        lines.append(Text(text + f" ({cost['per_hour']:.2f}/h)"))
    title = f"hms run {current.get('workdir', '')} on {current.get('host', '?')}"
    return Panel(Group(*lines), title=title, title_align="left")


def _jobs_table(current: Mapping[str, Any]) -> Table | Text:
    jobs = current.get("jobs", {})
    if not jobs:
        return Text("no job has written status/run.json yet", style="dim")
    table = Table(title="jobs", title_justify="left", expand=False)
    for column in ("job", "stage", "model", "fold", "epoch", "step", "progress", "loss",
                   "samples/s", "elapsed", "ETA", "state"):
        table.add_column(column, no_wrap=column in ("job", "progress"))
    for name, job in jobs.items():
        progress = job.get("progress")
        bar = Table.grid(padding=(0, 1))
        if progress is not None:
            bar.add_row(ProgressBar(total=1.0, completed=progress, width=16), f"{progress:4.0%}")
        state = job.get("state", "")
        table.add_row(name, _cell(job.get("stage")), _cell(job.get("model")), _cell(job.get("fold")),
                      _ratio(job, "epoch", "epochs"), _ratio(job, "step", "steps"), bar,
                      _number(job.get("loss"), ".4f"), _number(job.get("samples_per_s"), ".1f"),
                      format_duration(job.get("elapsed_s")), format_duration(job.get("eta_s")),
                      Text(state, style=_STATE_STYLE.get(state, "")))
    return table


def _gpu_view(gpu: Mapping[str, Any]) -> Table | Text:
    if not gpu.get("available"):
        return Text(f"GPU: none ({gpu.get('reason', 'not reported')})", style="dim")
    table = Table(title=f"GPU (driver {gpu.get('driver')})", title_justify="left")
    for column in ("gpu", "name", "util", "memory", "temp", "power"):
        table.add_column(column)
    for dev in gpu["devices"]:
        table.add_row(str(dev["index"]), dev["name"], f"{dev['utilization_pct']:.0f}%",
                      f"{dev['memory_used_mib'] / 1024:.1f} / {dev['memory_total_mib'] / 1024:.1f} GiB",
                      f"{dev['temperature_c']:.0f} C",
                      "-" if dev.get("power_w") is None else f"{dev['power_w']:.0f} W")
    return table


def format_duration(seconds: float | None) -> str:
    """``3725`` -> ``"1h 02m"``, ``65`` -> ``"1m 05s"``, None -> ``"-"``."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d {hours % 24:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def _ratio(job: Mapping[str, Any], done: str, total: str) -> str:
    if job.get(done) is None:
        return "-"
    return f"{job[done]}/{job[total]}" if job.get(total) else str(job[done])
