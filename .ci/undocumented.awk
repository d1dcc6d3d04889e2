# Reads the detailed coverage table of `docc convert --experimental-documentation-coverage` and prints the public
# symbols written in this package that have no doc comment (synthesized conformances and inherited members are
# left out). `make docs` fails when it prints anything.
BEGIN { FS = "|" }
NF > 7 {
  name = $1; kind = $2; abstract = $3; path = $8
  gsub(/^ +| +$/, "", name); gsub(/^ +| +$/, "", kind); gsub(/^ +| +$/, "", abstract); gsub(/^ +| +$/, "", path)
  if (abstract != "false") next
  if (kind ~ /CollectionGroup|Article|Operator|Extended|Module/) next
  if (name ~ /^(init\(rawValue:\)|init\(from:\)|encode\(to:\)|hash\(into:\)|hashValue|rawValue|measure.*|allCases|AllCases|RawValue|localizedDescription|sleep\(for:tolerance:\))$/) next
  print path
}
