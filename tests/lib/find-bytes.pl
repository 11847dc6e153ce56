#!/usr/bin/perl
# find-bytes.pl FILE HEX...: prints, for each HEX byte string, how many times it
# occurs in FILE (a byte-exact search: no lines, no encodings).
use strict;
use warnings;
my $file = shift @ARGV;
open(my $fh, '<:raw', $file) or die "find-bytes: $file: $!\n";
local $/;
my $data = <$fh>;
close $fh;
for my $hex (@ARGV) {
    my $needle = pack('H*', $hex);
    my ($n, $pos) = (0, 0);
    while (($pos = index($data, $needle, $pos)) >= 0) { $n++; $pos++; }
    print "$hex $n\n";
}
