from ccache_cli.cli.main import main

main()
