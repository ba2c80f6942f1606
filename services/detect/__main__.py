from services.detect.main import main

raise SystemExit(main())
