"""How a browser reaches a desktop: the site's TURN server, the WebRTC ICE configuration, and
the TURN check of `hpcdesk doctor`. Shared by the login side and the node agent."""
