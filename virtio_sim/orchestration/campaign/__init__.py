"""The campaign harness matrix/, attacks/ and conformance/ run on (issue 26 step 5).

A campaign is target -> bench -> case -> verdict -> report. What each campaign's target,
bench, case and judging are stays with it (a matrix cell, an attack scenario on a target,
a conformance checker on a device under test); what they share is here, one module per job:

* target.py: the ``KIND:NAME[,key=value]`` text of ``--target``, read strictly;
* deadline.py: the one deadline mechanism (a wall or thread-CPU budget, and waiting
  within it); the runners that stop a case past its budget: pool.py (worker processes,
  killed), child.py (a killable child of a dask task thread), threadcase.py (a thread,
  CaseTimeout raised in it), deadline.trio_deadline (a trio task, cancelled);
* verdict.py: the report model (Status, CaseVerdict) and NoAnswer, the record a runner
  makes for a case it has no answer from;
* junit.py, html.py, outputs.py: the one JUnit writer, the HTML frame, the report files;
* progress.py, interrupt.py: progress lines, and SIGINT/SIGTERM ending a run once with
  partial reports.

Like pytest's runner/report split: runners produce records, each campaign maps them onto
the report model, the writers read only the model.
"""
