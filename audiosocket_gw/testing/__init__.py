"""Tooling: the fakes and measurements users run around the gateway, never the gateway.

* :mod:`.simulator` -- a PBX simulator speaking AudioSocket and AMI as Asterisk does
  (``audiosocket-gw simulate``);
* :mod:`.localbot` -- a local OpenAI-Realtime-compatible bot (GA wire format);
* :mod:`.mock_realtime` -- ``audiosocket-gw mock-realtime``: that bot as a stand-alone server;
* :mod:`.fakeapp` -- a strict fake Twilio Media Streams app, shaped like Twilio's and
  OpenAI's samples;
* :mod:`.demo` -- ``audiosocket-gw demo`` / ``make demo``;
* :mod:`.proc` -- the real gateway as a child process (demo, bench, tests);
* :mod:`.bench` -- ``audiosocket-gw bench`` / ``make bench``.

Why a package of its own: the runtime (everything else under ``audiosocket_gw``) never
imports it, so none of this code can end up on a call's path; ``tests/test_layout.py``
enforces that. Only ``audiosocket_gw.cli`` reaches in, lazily, to run these commands.
It ships in the installed package because those commands are part of the CLI contract.
Nothing is imported here: import the submodule you need.
"""
