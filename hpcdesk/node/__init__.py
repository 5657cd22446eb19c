"""The compute node side: `hpcdesk node ...`, run by the job script inside the allocation.

Nothing here imports login-side code (scheduler, jobscripts, waiting) or the laptop side; it
shares only the core (config schema, request, session files, push channel, connect/).

  agent.py         the node agent: bind -> encoder -> port -> runtime -> health -> publish
                   -> supervise -> clean up; every phase in node.json
  errors.py        StartError (why it could not start) and Stop (why it stops)
  address.py       the node's reachable address (host name, interface, fixed)
  gpu.py           the allocated NVIDIA GPU through NVML, Slurm's allocation mapped to it
  driver.py        the node's NVIDIA driver files and kernel module version
  nvenc.py         does this GPU really encode H.264? an NVENC session, opened in a child
  encoder.py       which encoder the stream uses, with the reason told
  binding.py       GPU, X driver and encoder for one desktop, decided from those facts
  ports.py         TCP ports: kernel-proposed, announced nowhere (the listener is the claim)
  displays.py      race-free X display numbers for container images
  locks.py         node-wide exclusive claims (abstract names) behind displays
  xorg_conf.py     xorg.conf for the desktop's own X server (dummy or NVIDIA)
  modeline.py      VESA CVT modelines for the requested resolution
  xserver.py       the X server files and the host runtime's Xorg
  runtime/         how the desktop starts: the contract (__init__.py), apptainer.py (an
                   image), host.py (no container), kinds.py (runtime.kind -> one of them)
  selkies_web.py   where PyPI Selkies' web client lives on the node
  tls.py           HTTPS for the web UI: the site's certificate or a per-session one
  jobturn.py       TURN inside the job (coturn), relaying only to its own desktop
  sound.py         the desktop's own PulseAudio server (private socket + cookie), or why none
  health.py        readiness: who listens (the proof before any secret), the HTTP probes
                   and the rules that make a desktop ready
  procs.py         the children the agent starts, and how they are stopped
  janitor.py       the job's own cleanup when the agent is killed (SIGKILL)
  viewers.py       is anybody looking? (Selkies' own list of pages; the idle timeout)
  node_checks.py   `hpcdesk doctor --node`
  neighbour_checks.py  ... and what other users did to /tmp and the node-wide names
"""
