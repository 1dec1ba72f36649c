"""Reading TensorBoard event files the way TensorBoard shows them (tensorboard itself is not a
dependency)."""

from __future__ import annotations

import struct
from pathlib import Path


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Each scalar tag's (step, value)s as TensorBoard shows them: files are read in name order, and
    a ``SessionLog.START`` at step s (a writer's ``purge_step``) hides the earlier events from step
    s on."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    shown: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                shown = {tag: [(s, v) for s, v in pts if s < event.step] for tag,
                         pts in shown.items()}
            for v in event.summary.value:
                shown.setdefault(v.tag, []).append((event.step, v.simple_value))
    return shown
