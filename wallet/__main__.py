from wallet.cli import main

main()
