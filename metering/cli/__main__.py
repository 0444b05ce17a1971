from metering.cli import main

main()
