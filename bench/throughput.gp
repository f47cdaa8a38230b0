# bench/throughput.gp - the plot of `make bench`: messages per second against concurrent
# sessions (Postfix smtp-source -d, lock-step, 1 KiB messages), one line per server.
# bench/run.py calls it with the data file it wrote (columns: sessions, then the median msg/s
# of smtpd, smtp-sink and aiosmtpd):
#
#     gnuplot -e "datafile='build/bench/throughput.dat'; outfile='bench/throughput.png'" \
#         bench/throughput.gp
if (!exists("datafile")) datafile = 'build/bench/throughput.dat'
if (!exists("outfile")) outfile = 'bench/throughput.png'

set terminal pngcairo size 800,500 font "sans,10"
set output outfile
set title "SMTP messages/s, smtp-source -d (lock-step, 1 KiB messages), loopback, 2 cores"
set xlabel "concurrent sessions"
set ylabel "messages per second (median of rounds)"
set logscale x
set xtics ("1" 1, "16" 16, "100" 100)
set xrange [0.8:130]
set yrange [0:*]
set grid ytics
set key below
set style data linespoints
plot datafile using 1:2 title "smtpd (thread per connection)" lw 2 pt 7, \
     ''       using 1:3 title "Postfix smtp-sink" lw 2 pt 5, \
     ''       using 1:4 title "aiosmtpd (Python asyncio)" lw 2 pt 9
