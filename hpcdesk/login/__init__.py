"""The login node side: what runs where `hpcdesk submit` is typed (or on the OOD web node),
never on a compute node or a laptop.

Nothing in node/ or laptop/ imports from here.

  prepare.py       one way to prepare a session (submit, tunnel --submit, the OOD job)
  jobscript.py     renders the Slurm job script from jobscripts/ (jinja2, one quoting filter)
  waiting.py       waiting for a desktop: push events, session files, the scheduler last
  status.py        what a session is doing now (phases.desktop_state over Slurm and node.json)
  login_checks.py  `hpcdesk doctor` on the login node: config, Slurm, session directory, image
"""
