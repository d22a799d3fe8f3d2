"""The cases: what a benchmark run measures, each a function from a target (or what it needs
to start one) and the ``Sizes`` to the ``Row``s it adds — the proxy (and the cost of tracing
it), WebSocket connects, pings and audio, memory per idle connection, voice turns and bursts
of them, the flood, the idle-socket tax, streamed utterances, reply audio on the wire, and the
cluster."""

from bench.cases.cluster import case_cluster
from bench.cases.idle_tax import case_idle_tax
from bench.cases.memory import case_memory
from bench.cases.protection import case_flood
from bench.cases.proxy import case_proxy
from bench.cases.reply_audio import case_reply_audio
from bench.cases.tracing import case_tracing
from bench.cases.turns import case_black_hole, case_turn_burst, case_turns
from bench.cases.uploads import case_stop_to_transcription, case_upload_memory
from bench.cases.websocket import case_audio, case_connects, case_pings

__all__ = [
    "case_audio",
    "case_black_hole",
    "case_cluster",
    "case_connects",
    "case_flood",
    "case_idle_tax",
    "case_memory",
    "case_pings",
    "case_proxy",
    "case_reply_audio",
    "case_stop_to_transcription",
    "case_tracing",
    "case_turn_burst",
    "case_turns",
    "case_upload_memory",
]
