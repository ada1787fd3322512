from spikecompress.cli import main

raise SystemExit(main())
