"""Write one JSON line per play, task, host result and final stats to $SCIPLAT_EVENTS.

sciplat reads the file while ansible-playbook runs, to show progress per play
and host and to build the summary; the human-readable log goes to stdout as usual.
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: sciplat_events
type: aggregate
short_description: machine-readable progress events for the sciplat CLI
description: Writes JSON lines to the file named by the SCIPLAT_EVENTS environment variable.
requirements: [enable in ansible.cfg or ANSIBLE_CALLBACKS_ENABLED]
"""


def _parts(result):
    # ansible-core 2.19 exposes host/task/result; older versions only the private names
    host = getattr(result, "host", None) or result._host
    task = getattr(result, "task", None) or result._task
    data = getattr(result, "result", None)
    if not isinstance(data, dict):
        data = result._result
    return host.get_name(), task, data


def _message(data):
    for key in ("msg", "stderr", "module_stderr", "stdout", "reason"):
        value = data.get(key)
        if value:
            return str(value)[-2000:]
    if data.get("results"):
        for item in data["results"]:
            if isinstance(item, dict) and item.get("failed"):
                return _message(item)
    return ""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "sciplat_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        path = os.environ.get("SCIPLAT_EVENTS")
        self._out = open(path, "a", buffering=1, encoding="utf-8") if path else None  # noqa: SIM115

    def _emit(self, **event):
        if self._out is not None:
            event["t"] = round(time.time(), 3)
            self._out.write(json.dumps(event, default=str) + "\n")

    def v2_playbook_on_play_start(self, play):
        self._emit(event="play", name=play.get_name().strip())

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._emit(event="task", name=task.get_name().strip(), role=getattr(task._role, "_role_name", None))

    def v2_playbook_on_handler_task_start(self, task):
        self._emit(event="task", name=task.get_name().strip(), handler=True)

    def _result(self, status, result, **extra):
        host, task, data = _parts(result)
        event = {"event": "result", "host": host, "task": task.get_name().strip(), "status": status}
        if status == "ok" and data.get("changed"):
            event["status"] = "changed"
        if status in ("failed", "unreachable"):
            event["msg"] = _message(data)
            event["ignored"] = extra.get("ignore_errors", False)
        self._emit(**event)

    def v2_runner_on_ok(self, result):
        self._result("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result("failed", result, ignore_errors=ignore_errors)

    def v2_runner_on_unreachable(self, result):
        self._result("unreachable", result)

    def v2_runner_on_skipped(self, result):
        self._result("skipped", result)

    def v2_on_file_diff(self, result):
        host, task, data = _parts(result)
        diff = data.get("diff")
        if diff and data.get("changed", True):
            text = self._get_diff(diff)
            if text.strip():
                self._emit(event="diff", host=host, task=task.get_name().strip(), diff=text[-20000:])

    def v2_playbook_on_stats(self, stats):
        hosts = {h: stats.summarize(h) for h in sorted(stats.processed)}
        self._emit(event="stats", hosts=hosts)
        if self._out is not None:
            self._out.close()
            self._out = None
