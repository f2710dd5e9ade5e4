from lucie_nemo.cli import main

main()
