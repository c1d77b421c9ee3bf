from intent.cli import main

main()
