"""``audiosocket-gw bench`` / ``make bench``: load, barge-in and Twilio-streams figures.

* :mod:`.run` -- the entry point (:func:`~.run.run_bench`): concurrent echo calls, then
  the two measurements below, written to ``bench/results.json``;
* :mod:`.bargein` -- barge-in latency with the ``openai`` backend and the local bot;
* :mod:`.twilio` -- the ``twilio-stream`` backend and its mark echoes.

Why here and not in a top-level ``bench/`` folder of the repository: ``audiosocket-gw
bench`` is a documented command of the installed package, so the code must ship with it.
"""
