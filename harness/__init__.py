"""What drives hpcdesk from the outside, shared by the tests and the benchmarks (never shipped,
never imported by hpcdesk). Imported from the repository root: pytest puts it on the path
(pyproject.toml), benchmarks run as `python -m benchmarks.NAME`.

  devcluster.py       the dev cluster (tests/cluster/devcluster.sh): where things are, its
                      users and site, and how root runs a command as a user or on a node
  browser.py          a real headless Chromium driven over DevTools (the one browser driver)
  ports.py            a free TCP port to hand to a server
  fake_turn_rest.py   a site's TURN REST service, faked in the test process (no real one runs
                      here)
"""
