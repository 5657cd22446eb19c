"""The laptop side of hpcdesk: `hpcdesk tunnel`, from a laptop through SSH to a desktop.

Everything here runs on the user's own computer (Linux, macOS, Windows): it needs the base
dependencies and the `tunnel` extra (paramiko, sshtunnel) only, and imports nothing from the
login side (Slurm, sessions) or the node side (Xorg, NVML). It learns about the session by
running `hpcdesk` on the login node over the same SSH connection that carries the tunnel.

  target.py    [user@]host[:port] and ~/.ssh/config -> the hops to the login node
  hostkeys.py  known_hosts checks: unknown or changed keys are refused, with the fix
  auth.py      agent, key files, keyboard-interactive (2FA) answered on the terminal
  link.py      one SSH connection through every hop (ProxyCommand, ProxyJump by hand)
  remote.py    hpcdesk on the login node, run over that connection
  endpoint.py  what to forward, from `hpcdesk status --json` (web port, TURN port)
  forward.py   local ports forwarded to the node through the connection (sshtunnel)
  tunnel.py    the whole thing: session, forwards, reconnects, Ctrl-C, --cancel-on-exit
  command.py   the `hpcdesk tunnel` command
"""
