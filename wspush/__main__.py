from wspush.cli import main

raise SystemExit(main())
