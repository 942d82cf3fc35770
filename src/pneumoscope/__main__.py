from pneumoscope.cli.app import main

main()
