from services.capture.main import main

raise SystemExit(main())
