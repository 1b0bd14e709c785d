"""Call quality: the ITU-T G.107 E-model and MOS from Asterisk's RTCP AMI events."""

from audiosocket_gw.quality.emodel import estimate_mos, mos_from_r, r_factor
from audiosocket_gw.quality.rtcp import (
    ASTERISK_TO_CALLER,
    CALLER_TO_ASTERISK,
    DirectionStats,
    MosTracker,
    RtcpFormatError,
    RtcpSample,
    parse_rtcp_event,
    parse_rtpaudioqos,
)

__all__ = [
    "ASTERISK_TO_CALLER",
    "CALLER_TO_ASTERISK",
    "DirectionStats",
    "MosTracker",
    "RtcpFormatError",
    "RtcpSample",
    "estimate_mos",
    "mos_from_r",
    "parse_rtcp_event",
    "parse_rtpaudioqos",
    "r_factor",
]
