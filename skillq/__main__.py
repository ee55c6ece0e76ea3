from skillq.cli.main import main

main()
