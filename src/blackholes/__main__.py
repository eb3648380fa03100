from blackholes.cli import main

raise SystemExit(main())
