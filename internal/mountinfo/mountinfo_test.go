package mountinfo

import "testing"

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/plain`:               `/plain`,
		`/a\040b`:              `/a b`,
		`/tab\011nl\012bs\134`: "/tab\tnl\nbs\\",
		`/trailing\04`:         `/trailing\04`,
		`/not\9octal`:          `/not\9octal`,
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestUnder(t *testing.T) {
	// /proc is mounted in every namespace this runs in; /proc's own
	// submounts (if any) come first, and a sibling prefix never matches.
	got, err := Under("/proc")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 || got[len(got)-1] != "/proc" {
		t.Fatalf("Under(/proc) = %q, want it last", got)
	}
	for i, mp := range got {
		if mp != "/proc" && len(mp) <= len("/proc/") {
			t.Errorf("%q is not under /proc", mp)
		}
		if i > 0 && len(mp) > len(got[i-1]) {
			t.Errorf("%q after the shorter %q: not deepest first", mp, got[i-1])
		}
	}
	if got, _ := Under("/pro"); len(got) != 0 {
		t.Errorf("Under(/pro) = %q: a sibling prefix matched", got)
	}
}
