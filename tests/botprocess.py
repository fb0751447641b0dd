"""The production bot as a process against a lab: `etcdbot run --env-file DIR/env`, in Socket Mode
or HTTP mode, ready when its own `/readyz` says so, stopped with SIGTERM (killed only past a deadline).

HTTP mode also points the lab's workspace at the bot (`/_lab/http-delivery`), as a Slack admin
sets the request URL, and back to Socket Mode when the bot stops.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from lab.slack.client import LabClient, workspace_root
from tests.labfixture import ROOT, Lab, wait_for


def get(url: str, *, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@dataclass
class Bot:
    lab: Lab
    mode: str
    log_path: Path
    proc: subprocess.Popen[str] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.lab.env['ETCDBOT_HEALTH_PORT']}"

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.lab.env['ETCDBOT_HTTP_PORT']}/slack/events"

    @property
    def workspace(self) -> LabClient:
        return LabClient(root=workspace_root(self.lab.dir))

    def start(self, *, timeout: float = 45) -> Bot:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDBOT_")}
        env.update({"ETCDBOT_SLACK_MODE": self.mode, **self.env})
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bot.main", "run", "--env-file", str(self.lab.dir / "env")],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            )
        try:
            wait_for(self._ready, timeout=timeout, what=f"the bot ({self.mode} mode) to be ready")
            if self.mode == "socket":
                wait_for(lambda: "session" in self.log_path.read_text(), timeout=timeout,
                         what="the bot's Socket Mode session")
            else:
                self.workspace.http_delivery(self.events_url)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the bot exited ({self.proc.returncode}):\n{self.log_path.read_text()[-3000:]}")
        try:
            status, body = get(self.health_url + "/readyz", timeout=5)
        except OSError:
            return False
        return status == 200 and json.loads(body)["ready"]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.mode == "http":
            try:
                self.workspace.http_delivery(None)
            except Exception:  # the lab may be gone already; the bot must stop anyway
                pass
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text()
