from pneumoscope.cli import main

main()
