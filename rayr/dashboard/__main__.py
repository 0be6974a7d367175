from rayr.dashboard.server import main

main()
