from bloomtui.cli import main

raise SystemExit(main())
