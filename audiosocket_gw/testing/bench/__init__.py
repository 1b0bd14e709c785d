"""``audiosocket-gw bench`` / ``make bench``: load, barge-in and Twilio-streams figures.

* :mod:`.run` -- the entry point (:func:`~.run.run_bench`): the steady state of each
  backend, then the two measurements below, written to ``bench/results.json``;
  ``bench --table`` prints the README's table from that file;
* :mod:`.steady` -- one backend at one level on one pinned core, steady window only,
  with the peers' CPU and lateness (peer-limited levels flagged);
* :mod:`.soak_peers` -- the local bot and the fake app in processes of their own;
* :mod:`.bargein` -- barge-in latency with the ``openai`` backend and the local bot;
* :mod:`.twilio` -- the ``twilio-stream`` backend and its mark echoes.

Why here and not in a top-level ``bench/`` folder of the repository: ``audiosocket-gw
bench`` is a documented command of the installed package, so the code must ship with it.
"""
