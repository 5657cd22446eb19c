"""Open OnDemand: the batch connect app `hpcdesk ood generate` writes, and the steps its job
runs (form check on the dashboard, session start, waiting for the agent).

  form.py    the form's fields, limited by the site config, and their validation
  app.py     renders the app (manifest, form, submit, templates, view, icon) from templates/
  job.py     inside the OOD job: make the session directory, wait until the agent is ready
"""
