from services.sink.main import main

raise SystemExit(main())
