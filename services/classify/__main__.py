from services.classify.main import main

raise SystemExit(main())
