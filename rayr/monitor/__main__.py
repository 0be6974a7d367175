from rayr.monitor.monitor import main

main()
