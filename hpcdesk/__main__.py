from hpcdesk.cli import main

raise SystemExit(main())
