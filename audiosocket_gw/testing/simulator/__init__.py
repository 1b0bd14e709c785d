"""A PBX simulator that speaks AudioSocket (and later AMI) exactly as Asterisk does.

Used by ``make demo``, the tests and ``make bench``; also a CLI
(``audiosocket-gw simulate``) so users can load-test a gateway without Asterisk.
"""

from .audio import load_wav_8k, speech_like
from .pbx import CallPlan, CallReport, SimulationReport, run_simulation

__all__ = [
    "CallPlan",
    "CallReport",
    "SimulationReport",
    "load_wav_8k",
    "run_simulation",
    "speech_like",
]
