from k2actors.cli import main

raise SystemExit(main())
