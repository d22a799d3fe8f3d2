from kalami_gateway.app.cli import main

raise SystemExit(main())
