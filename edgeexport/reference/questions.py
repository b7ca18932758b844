"""English questions on short contexts, each answered by a span of its context: the realistic input of
question-answering models (golden cases, task-agreement evaluation, int8 calibration) and the tests' QA head.

Written for this project, as :mod:`edgeexport.reference.sentences` is for single sentences: 144 contexts of one
to three everyday sentences (weather, food, sport, technology, places and people), each with two questions
whose answer is a span of the context, written out here (a name, a number, a place, a phrase). Each context
belongs to exactly one split, with both its questions, so golden cases, evaluation, calibration and the head the
tests train never share a context (:func:`split`): the first 80 (:data:`CONTEXTS`) cycle through :data:`SPLITS`,
the 32 of :data:`MORE_TRAIN` are all train and the 32 of :data:`MORE_EVALUATION` all evaluation, so that answer
spans are judged on 96 pairs, where 97 % span agreement tolerates two changed spans and one borderline answer does
not decide a verdict (docs/parity.md, "Question answering").
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "train", "evaluation", "calibration", "golden")  # CONTEXTS[i] belongs to SPLITS[i % 5]

Context = tuple[str, tuple[tuple[str, str], ...]]  # (context, ((question, answer), (question, answer)))

# Every answer occurs exactly once in its context.
CONTEXTS: tuple[Context, ...] = (
    ("The old lighthouse at Carrick Point was built in 1852. It was painted red and white so that sailors could "
     "see it during the day.",
     (("When was the lighthouse at Carrick Point built?", "1852"),
      ("What colours was the lighthouse painted?", "red and white"))),
    ("Maria bakes bread every Saturday morning. Her favourite loaf is a dark rye with caraway seeds, which she "
     "sells at the village market.",
     (("What is Maria's favourite loaf?", "a dark rye with caraway seeds"),
      ("Where does Maria sell her bread?", "at the village market"))),
    ("The city marathon starts at the town hall and finishes in Riverside Park. Last year about 12,000 runners "
     "took part.",
     (("Where does the marathon finish?", "Riverside Park"),
      ("How many runners took part last year?", "about 12,000"))),
    ("The new laptop weighs 1.2 kilograms and has a battery that lasts fourteen hours. It goes on sale in March.",
     (("How much does the new laptop weigh?", "1.2 kilograms"),
      ("When does the laptop go on sale?", "in March"))),
    ("A storm named Helga reached the northern coast on Tuesday night. Winds of 120 kilometres an hour closed the "
     "main bridge until Thursday.",
     (("What was the storm called?", "Helga"),
      ("Until when was the main bridge closed?", "Thursday"))),
    ("Tomás learned to play the violin from his grandfather. He now plays in the city orchestra, which performs "
     "every Friday evening.",
     (("Who taught Tomás to play the violin?", "his grandfather"),
      ("When does the orchestra perform?", "every Friday evening"))),
    ("The museum's most famous painting shows a ship caught in a storm. It was painted by Anna Lindqvist in 1903.",
     (("Who painted the museum's most famous painting?", "Anna Lindqvist"),
      ("What does the painting show?", "a ship caught in a storm"))),
    ("Lemon trees grow best in warm, sunny places with well-drained soil. In colder countries they are often kept "
     "in large pots and brought indoors for the winter.",
     (("What kind of soil do lemon trees prefer?", "well-drained soil"),
      ("How are lemon trees kept in colder countries?", "in large pots"))),
    ("The school library opens at half past eight and closes at five. Students may borrow up to six books at a "
     "time.",
     (("How many books may students borrow at a time?", "up to six books"),
      ("When does the library close?", "at five"))),
    ("Our football club was founded in 1921 by a group of railway workers. Its home ground, Station Lane, holds "
     "eight thousand fans.",
     (("Who founded the football club?", "a group of railway workers"),
      ("What is the club's home ground called?", "Station Lane"))),
    ("The recipe needs three ripe bananas, two eggs and a cup of flour. Bake the mixture for fifty minutes at 180 "
     "degrees.",
     (("How long should the mixture bake?", "fifty minutes"),
      ("How many ripe bananas does the recipe need?", "three"))),
    ("Engineers at the company replaced the old servers with machines that use forty percent less power. The "
     "move took six weeks.",
     (("How long did the move take?", "six weeks"),
      ("How much less power do the new machines use?", "forty percent"))),
    ("Fog delayed dozens of flights at the airport this morning. Passengers were told to check the departure "
     "boards for updates.",
     (("What delayed the flights?", "Fog"),
      ("What were passengers told to check?", "the departure boards"))),
    ("The river Ness flows out of Loch Ness and reaches the sea at Inverness. It is about twelve miles long.",
     (("Where does the river Ness reach the sea?", "at Inverness"),
      ("How long is the river Ness?", "about twelve miles"))),
    ("Kofi opened a small repair shop in 2015. He fixes phones, tablets and old radios, and his sister keeps the "
     "accounts.",
     (("What does Kofi fix?", "phones, tablets and old radios"),
      ("Who keeps the accounts?", "his sister"))),
    ("The swimming pool is closed on Mondays for cleaning. On other days it opens at seven in the morning.",
     (("Why is the swimming pool closed on Mondays?", "for cleaning"),
      ("When does the pool open on other days?", "at seven in the morning"))),
    ("Wheat was first grown in the Fertile Crescent about ten thousand years ago. Today China produces more wheat "
     "than any other country.",
     (("Where was wheat first grown?", "the Fertile Crescent"),
      ("Which country produces the most wheat today?", "China"))),
    ("The chess club meets in room 14 every Wednesday. New members are welcome, and boards are provided.",
     (("Where does the chess club meet?", "in room 14"),
      ("When does the chess club meet?", "every Wednesday"))),
    ("Heavy snow fell across the Alps over the weekend. Several ski resorts opened a week earlier than planned.",
     (("Where did heavy snow fall?", "across the Alps"),
      ("How much earlier did the ski resorts open?", "a week earlier"))),
    ("The company's app lets users pay for parking with their phone. More than two million people downloaded it "
     "in the first year.",
     (("What does the app let users pay for?", "parking"),
      ("How many people downloaded the app in the first year?", "More than two million"))),
    ("Priya won the regional spelling contest by spelling the word onomatopoeia. She is eleven years old and "
     "lives in Leeds.",
     (("Which word did Priya spell to win?", "onomatopoeia"),
      ("Where does Priya live?", "Leeds"))),
    ("The bakery on King Street sells croissants, sourdough loaves and cinnamon buns. It closes early on Sundays.",
     (("Which street is the bakery on?", "King Street"),
      ("When does the bakery close early?", "on Sundays"))),
    ("The tennis match lasted three hours and twenty minutes. Garcia won in the final set after saving two match "
     "points.",
     (("Who won the tennis match?", "Garcia"),
      ("How long did the match last?", "three hours and twenty minutes"))),
    ("A solar panel turns sunlight into electricity. Most panels on houses are made of silicon and last for about "
     "twenty-five years.",
     (("What are most solar panels on houses made of?", "silicon"),
      ("How long do solar panels last?", "about twenty-five years"))),
    ("The village holds a harvest festival at the end of September. There is music, a parade of tractors and a "
     "competition for the largest pumpkin.",
     (("When is the harvest festival held?", "at the end of September"),
      ("What is the competition for?", "the largest pumpkin"))),
    ("Dr Okafor works at the children's hospital in Bristol. She specialises in treating asthma.",
     (("Where does Dr Okafor work?", "the children's hospital in Bristol"),
      ("What does Dr Okafor specialise in treating?", "asthma"))),
    ("The train from Vienna to Salzburg takes about two and a half hours. Trains leave every hour from the main "
     "station.",
     (("How long does the train from Vienna to Salzburg take?", "about two and a half hours"),
      ("How often do trains leave?", "every hour"))),
    ("Honey bees visit flowers to collect nectar and pollen. A single hive can hold more than fifty thousand bees "
     "in summer.",
     (("What do honey bees collect from flowers?", "nectar and pollen"),
      ("How many bees can a single hive hold in summer?", "more than fifty thousand"))),
    ("The team's new coach, Lena Berg, used to play in goal for the national side. She wants the players to pass "
     "the ball faster.",
     (("Who is the team's new coach?", "Lena Berg"),
      ("Where did the coach use to play?", "in goal"))),
    ("The printer on the second floor is out of toner. Please use the one next to the kitchen until it is fixed.",
     (("Where is the printer that is out of toner?", "on the second floor"),
      ("Which printer should people use until it is fixed?", "the one next to the kitchen"))),
    ("The summer drought lowered the lake by almost two metres. Boats at the marina had to be moved to deeper "
     "water.",
     (("By how much did the drought lower the lake?", "almost two metres"),
      ("Where were the boats moved?", "to deeper water"))),
    ("Paella comes from Valencia in eastern Spain. It is cooked in a wide, shallow pan with rice, saffron and "
     "often rabbit or seafood.",
     (("Where does paella come from?", "Valencia"),
      ("What kind of pan is paella cooked in?", "a wide, shallow pan"))),
    ("The cycling race covers 180 kilometres and crosses two mountain passes. The winner last year was a "
     "23-year-old rider from Colombia.",
     (("How far is the cycling race?", "180 kilometres"),
      ("Where was last year's winner from?", "Colombia"))),
    ("The phone's camera can record video at 60 frames per second. Its screen measures six inches across.",
     (("How fast can the camera record video?", "60 frames per second"),
      ("How big is the phone's screen?", "six inches across"))),
    ("Jonas planted tomatoes, beans and courgettes in his garden in May. By August he had more vegetables than "
     "his family could eat.",
     (("When did Jonas plant his garden?", "in May"),
      ("What did Jonas plant?", "tomatoes, beans and courgettes"))),
    ("The bridge over the Severn was opened by the Queen in 1966. Drivers no longer pay a toll to cross it.",
     (("Who opened the bridge over the Severn?", "the Queen"),
      ("What do drivers no longer pay?", "a toll"))),
    ("Ice cream was served at the party in three flavours: vanilla, strawberry and pistachio. The children liked "
     "the strawberry best.",
     (("Which flavour did the children like best?", "the strawberry"),
      ("How many flavours were served?", "three flavours"))),
    ("Rain is expected to spread from the west during the afternoon. Temperatures will stay around twelve "
     "degrees.",
     (("From which direction will the rain spread?", "from the west"),
      ("What will temperatures stay around?", "twelve degrees"))),
    ("The software update fixes a bug that drained the battery overnight. It also adds support for three new "
     "languages.",
     (("What did the bug do?", "drained the battery overnight"),
      ("How many new languages does the update support?", "three new languages"))),
    ("Ahmed has run a bicycle shop in Cairo for thirty years. He builds each frame by hand from steel tubes.",
     (("Where is Ahmed's bicycle shop?", "in Cairo"),
      ("What does Ahmed build each frame from?", "steel tubes"))),
    ("The concert was moved indoors because of the rain. About four hundred people crowded into the town hall to "
     "listen.",
     (("Why was the concert moved indoors?", "because of the rain"),
      ("Where did people crowd to listen?", "into the town hall"))),
    ("The volleyball final was played on the beach at Copacabana. The home pair won in two straight sets.",
     (("Where was the volleyball final played?", "on the beach at Copacabana"),
      ("How did the home pair win?", "in two straight sets"))),
    ("Green tea is made from leaves that are steamed or pan-fired soon after picking. This keeps them from "
     "turning brown.",
     (("How are the leaves of green tea treated?", "steamed or pan-fired"),
      ("When are the leaves steamed?", "soon after picking"))),
    ("The robot vacuum maps each room with a laser. It returns to its charging dock when the battery runs low.",
     (("How does the robot vacuum map each room?", "with a laser"),
      ("Where does the robot go when the battery runs low?", "to its charging dock"))),
    ("Last night the temperature fell to minus eight degrees in the valley. Frost damaged the young apple "
     "blossom.",
     (("How low did the temperature fall?", "minus eight degrees"),
      ("What did the frost damage?", "the young apple blossom"))),
    ("The novel tells the story of a girl who sails alone around the world. It was written by Clara Mendes and "
     "won a prize in 2019.",
     (("Who wrote the novel?", "Clara Mendes"),
      ("What does the girl in the novel do?", "sails alone around the world"))),
    ("The market opens at six in the morning. Farmers bring cheese, eggs and fresh vegetables from the "
     "surrounding hills.",
     (("When does the market open?", "at six in the morning"),
      ("Where do the farmers come from?", "the surrounding hills"))),
    ("Our hockey team trains on the indoor rink on Tuesday and Thursday evenings. The season begins in October.",
     (("Where does the hockey team train?", "on the indoor rink"),
      ("When does the season begin?", "in October"))),
    ("The satellite was launched from French Guiana in April. It will measure sea levels for at least seven "
     "years.",
     (("Where was the satellite launched from?", "French Guiana"),
      ("What will the satellite measure?", "sea levels"))),
    ("The family drove to the coast for the holidays. Their car broke down near Exeter, and a mechanic fixed it "
     "the next morning.",
     (("Where did the car break down?", "near Exeter"),
      ("Who fixed the car?", "a mechanic"))),
    ("Miso soup is made from a stock called dashi and fermented soybean paste. It is often served with tofu and "
     "seaweed.",
     (("What is the stock in miso soup called?", "dashi"),
      ("What is miso soup often served with?", "tofu and seaweed"))),
    ("The goalkeeper broke his wrist in training on Friday. He will miss the next six matches.",
     (("What did the goalkeeper break?", "his wrist"),
      ("How many matches will he miss?", "the next six matches"))),
    ("The website was redesigned to load faster on mobile phones. Pages now open in under a second.",
     (("Why was the website redesigned?", "to load faster on mobile phones"),
      ("How quickly do pages open now?", "in under a second"))),
    ("The hurricane season in the Atlantic runs from June to November. Most storms form in August and September.",
     (("When does the Atlantic hurricane season run?", "from June to November"),
      ("When do most storms form?", "in August and September"))),
    ("The castle on the hill was built by a Norman lord in the twelfth century. Today it is a museum with a café "
     "in the old kitchen.",
     (("Who built the castle?", "a Norman lord"),
      ("Where is the café?", "in the old kitchen"))),
    ("Sofia teaches mathematics at a secondary school in Porto. In her free time she climbs and takes "
     "photographs of birds.",
     (("What subject does Sofia teach?", "mathematics"),
      ("What does Sofia photograph?", "birds"))),
    ("To make the sauce, melt the butter, stir in the flour and slowly add warm milk. Season it with nutmeg.",
     (("What should the sauce be seasoned with?", "nutmeg"),
      ("What should be added slowly?", "warm milk"))),
    ("The golf course has eighteen holes and a view of the sea. Its longest hole is the seventh, at 560 metres.",
     (("Which is the course's longest hole?", "the seventh"),
      ("How long is the longest hole?", "560 metres"))),
    ("Password managers store your passwords in an encrypted vault. You only need to remember one master "
     "password.",
     (("Where do password managers store passwords?", "in an encrypted vault"),
      ("What do you need to remember?", "one master password"))),
    ("A thick fog rolled in from the sea at dawn. It had cleared by ten o'clock, and the rest of the day was "
     "sunny.",
     (("Where did the fog come from?", "from the sea"),
      ("When had the fog cleared?", "by ten o'clock"))),
    ("The zoo's new elephant, Mali, arrived from Thailand last spring. She eats about 150 kilograms of food a "
     "day.",
     (("Where did Mali come from?", "Thailand"),
      ("How much food does Mali eat a day?", "about 150 kilograms"))),
    ("The pizzeria bakes its pizzas in a wood-fired oven at 450 degrees. Each pizza cooks in ninety seconds.",
     (("What kind of oven does the pizzeria use?", "a wood-fired oven"),
      ("How long does each pizza take to cook?", "ninety seconds"))),
    ("The relay team from Jamaica set a world record in the 4x100 metres. The last runner crossed the line "
     "after 36.84 seconds.",
     (("Which relay team set a world record?", "Jamaica"),
      ("What was the relay team's time?", "36.84 seconds"))),
    ("The engineers tested the new battery by charging and emptying it a thousand times. It still held ninety "
     "percent of its charge.",
     (("How many times was the battery charged?", "a thousand times"),
      ("How much of its charge did the battery still hold?", "ninety percent"))),
    ("The flood in the town centre was caused by a blocked drain. Shops on Market Street were closed for two "
     "days.",
     (("What caused the flood?", "a blocked drain"),
      ("On which street were the shops closed?", "Market Street"))),
    ("Olga moved from Kyiv to Warsaw in 2020 to study medicine. She hopes to become a surgeon.",
     (("What does Olga study?", "medicine"),
      ("What does Olga hope to become?", "a surgeon"))),
    ("The café serves breakfast until eleven. Its best-known dish is scrambled eggs with smoked salmon on rye "
     "bread.",
     (("Until when does the café serve breakfast?", "until eleven"),
      ("What is the café's best-known dish?", "scrambled eggs with smoked salmon on rye bread"))),
    ("The rowing race between the two universities is held on the Thames every spring. The course is just under "
     "seven kilometres long.",
     (("Where is the rowing race held?", "on the Thames"),
      ("How long is the course?", "just under seven kilometres"))),
    ("The smart thermostat learns when you are at home and heats the house only then. Owners save about a tenth "
     "on their heating bills.",
     (("What does the smart thermostat learn?", "when you are at home"),
      ("How much do owners save on heating?", "about a tenth"))),
    ("The wind farm off the coast has sixty turbines. On a windy day it supplies enough power for 200,000 homes.",
     (("How many turbines does the wind farm have?", "sixty turbines"),
      ("How many homes can the wind farm supply?", "200,000 homes"))),
    ("The bus to the airport leaves from stop C outside the station. A single ticket costs four euros.",
     (("Where does the airport bus leave from?", "stop C"),
      ("How much does a single ticket cost?", "four euros"))),
    ("Pancakes are traditionally eaten on Shrove Tuesday in Britain. Many people serve them with lemon juice and "
     "sugar.",
     (("When are pancakes traditionally eaten in Britain?", "on Shrove Tuesday"),
      ("What do many people serve pancakes with?", "lemon juice and sugar"))),
    ("The boxer from Ghana won the title in the ninth round. It was his twenty-first win as a professional.",
     (("Where is the boxer from?", "Ghana"),
      ("In which round did the boxer win the title?", "the ninth round"))),
    ("The museum's computer system was shut down after a cyber attack on Sunday. Staff used paper tickets for "
     "the rest of the week.",
     (("What shut down the museum's computer system?", "a cyber attack"),
      ("What did the staff use for the rest of the week?", "paper tickets"))),
    ("A heat wave brought temperatures of 41 degrees to Seville. The city opened cool rooms in its libraries for "
     "older people.",
     (("What temperature did the heat wave bring?", "41 degrees"),
      ("Where did the city open cool rooms?", "in its libraries"))),
    ("The children's choir rehearses in the church hall on Saturday mornings. It will sing at the Christmas "
     "concert in December.",
     (("Where does the choir rehearse?", "in the church hall"),
      ("When is the Christmas concert?", "in December"))),
    ("Chocolate is made from the beans of the cacao tree. Most cacao is grown in West Africa, especially in "
     "Ivory Coast and Ghana.",
     (("What is chocolate made from?", "the beans of the cacao tree"),
      ("Where is most cacao grown?", "in West Africa"))),
    ("The marathon runner drank water every five kilometres. She finished in second place, one minute behind "
     "the winner.",
     (("In which place did the runner finish?", "second place"),
      ("How far behind the winner was she?", "one minute"))),
    ("The electric scooter has a top speed of 25 kilometres an hour. Its battery charges fully in four hours.",
     (("What is the scooter's top speed?", "25 kilometres an hour"),
      ("How long does the scooter's battery take to charge?", "four hours"))),
    ("The island is reached by a ferry that sails twice a day. In winter the crossing is often cancelled because "
     "of high waves.",
     (("How often does the ferry sail?", "twice a day"),
      ("Why is the crossing often cancelled in winter?", "because of high waves"))),
)


# Added so that the head the tests train sees more answers: every one of these is train.
MORE_TRAIN: tuple[Context, ...] = (
    ("The bakery in Ghent is famous for its speculoos biscuits. It has been run by the same family since 1898.",
     (("What is the bakery in Ghent famous for?", "its speculoos biscuits"),
      ("Since when has the same family run the bakery?", "since 1898"))),
    ("A cold snap froze the water pipes in the school on Monday. The pupils were sent home at lunchtime.",
     (("What froze the water pipes?", "A cold snap"),
      ("When were the pupils sent home?", "at lunchtime"))),
    ("The badminton club plays in the sports hall on Thursday evenings. Rackets can be borrowed for one pound.",
     (("Where does the badminton club play?", "in the sports hall"),
      ("How much does it cost to borrow a racket?", "one pound"))),
    ("The smart watch measures heart rate and counts steps. Its battery lasts about a week.",
     (("What does the smart watch measure?", "heart rate"),
      ("How long does the watch's battery last?", "about a week"))),
    ("Elena works as a park ranger in the Pyrenees. She counts the bears and leads walks for visitors in summer.",
     (("Where does Elena work?", "in the Pyrenees"),
      ("What does Elena count?", "the bears"))),
    ("The aquarium opened a new tank for sharks in June. It holds two million litres of sea water.",
     (("What did the aquarium open a new tank for?", "sharks"),
      ("How much water does the tank hold?", "two million litres"))),
    ("Hummus is made from chickpeas, tahini, lemon juice and garlic. It is usually eaten with warm flatbread.",
     (("What is hummus usually eaten with?", "warm flatbread"),
      ("What is hummus made from?", "chickpeas, tahini, lemon juice and garlic"))),
    ("The golf tournament was stopped for an hour because of lightning. The leader finished nine under par.",
     (("Why was the golf tournament stopped?", "because of lightning"),
      ("How far under par did the leader finish?", "nine under par"))),
    ("Gales of up to 100 miles an hour hit the Western Isles overnight. Ferries to the mainland were cancelled.",
     (("Where did the gales hit?", "the Western Isles"),
      ("What was cancelled?", "Ferries to the mainland"))),
    ("The company's new phone folds in half like a book. It costs eighteen hundred euros.",
     (("How does the new phone fold?", "in half like a book"),
      ("How much does the new phone cost?", "eighteen hundred euros"))),
    ("Marco sails a fishing boat out of Naples. He catches mostly squid and sells it to restaurants on the "
     "waterfront.",
     (("What does Marco mostly catch?", "squid"),
      ("Who does Marco sell his catch to?", "restaurants on the waterfront"))),
    ("The town's tram line was extended to the university last year. A tram now runs every six minutes.",
     (("Where was the tram line extended to?", "the university"),
      ("How often does a tram run?", "every six minutes"))),
    ("Sushi rice is seasoned with vinegar, sugar and salt. It should be cooled to room temperature before use.",
     (("What is sushi rice seasoned with?", "vinegar, sugar and salt"),
      ("To what temperature should sushi rice be cooled?", "room temperature"))),
    ("The boxing gym on Mill Lane trains about forty young people. Its coach, Danny Reid, was a champion in the "
     "nineties.",
     (("Who is the coach of the boxing gym?", "Danny Reid"),
      ("How many young people does the gym train?", "about forty"))),
    ("A week of sunshine dried out the moors, and a fire broke out near the reservoir. Firefighters put it out "
     "after two days.",
     (("Where did the fire break out?", "near the reservoir"),
      ("How long did it take to put out the fire?", "two days"))),
    ("The game console can stream games from the internet instead of discs. It needs a connection of at least "
     "twenty megabits.",
     (("What can the console stream games from?", "the internet"),
      ("What connection does the console need?", "at least twenty megabits"))),
    ("Amina studies volcanoes at the university in Reykjavik. Last year she spent a month on the slopes of Hekla.",
     (("What does Amina study?", "volcanoes"),
      ("How long did Amina spend on Hekla?", "a month"))),
    ("The zoo's penguins are fed herring twice a day. Visitors can watch the feeding at eleven and three.",
     (("What are the penguins fed?", "herring"),
      ("When can visitors watch the feeding?", "at eleven and three"))),
    ("The food festival in Lyon attracts chefs from twenty countries. This year's prize went to a dessert of "
     "pears and chestnuts.",
     (("Where is the food festival held?", "in Lyon"),
      ("What won this year's prize?", "a dessert of pears and chestnuts"))),
    ("The skier from Norway won the downhill by a tenth of a second. It was her first win on the World Cup "
     "circuit.",
     (("Where is the skier from?", "Norway"),
      ("By how much did she win the downhill?", "a tenth of a second"))),
    ("Low cloud and drizzle are forecast for the whole of Wednesday. Highs will reach only nine degrees.",
     (("What is forecast for Wednesday?", "Low cloud and drizzle"),
      ("How high will temperatures reach?", "only nine degrees"))),
    ("The hospital installed a robot that sorts blood samples. It can handle eight hundred samples an hour.",
     (("What does the robot sort?", "blood samples"),
      ("How many samples can the robot handle an hour?", "eight hundred samples"))),
    ("Luis restored an old sailing boat he found in a barn in Galicia. The work took him four summers.",
     (("Where did Luis find the boat?", "in a barn in Galicia"),
      ("How long did the restoration take?", "four summers"))),
    ("The bridge across the harbour is lifted to let tall ships pass. It opens about five times a day.",
     (("Why is the bridge lifted?", "to let tall ships pass"),
      ("How often does the bridge open?", "about five times a day"))),
    ("Tortillas are made from maize flour, water and a little salt. They are cooked on a hot, dry griddle.",
     (("What are tortillas cooked on?", "a hot, dry griddle"),
      ("What flour are tortillas made from?", "maize flour"))),
    ("The table tennis champion started playing at the age of five. She practises for four hours every day.",
     (("At what age did the champion start playing?", "the age of five"),
      ("How long does she practise every day?", "four hours"))),
    ("Thunder and hail hit the city during the evening rush hour. Several streets near the station were flooded.",
     (("When did the thunder and hail hit?", "during the evening rush hour"),
      ("Which streets were flooded?", "Several streets near the station"))),
    ("The messaging app added a feature that deletes messages after a day. Users can switch it on for each chat.",
     (("What does the new feature do?", "deletes messages after a day"),
      ("How can users switch the feature on?", "for each chat"))),
    ("Nadia keeps bees on the roof of her flat in Paris. Last summer her hives gave thirty jars of honey.",
     (("Where does Nadia keep bees?", "on the roof of her flat in Paris"),
      ("How many jars of honey did the hives give?", "thirty jars"))),
    ("The canal boat holiday starts in Oxford and ends in Birmingham. Boats travel at about four miles an hour.",
     (("Where does the canal boat holiday end?", "in Birmingham"),
      ("How fast do the boats travel?", "about four miles an hour"))),
    ("The soup kitchen serves hot meals to about two hundred people each night. It is run by volunteers from "
     "local churches.",
     (("How many people does the soup kitchen serve?", "about two hundred people"),
      ("Who runs the soup kitchen?", "volunteers from local churches"))),
    ("The horse race was won by a ten-year-old mare called Silver Dawn. Her jockey had never won the race before.",
     (("Which horse won the race?", "Silver Dawn"),
      ("How old is the winning horse?", "ten-year-old"))),
)

# Added for a larger evaluation split: every one of these is evaluation.
MORE_EVALUATION: tuple[Context, ...] = (
    ("The library in Dunmore reopened on Monday after a year of repairs to its roof. It now has a reading room "
     "for children on the ground floor.",
     (("When did the library in Dunmore reopen?", "on Monday"),
      ("What was repaired?", "its roof"))),
    ("Yuki runs a noodle stall near the harbour in Osaka. She makes the broth from pork bones and simmers it for "
     "twelve hours.",
     (("Where is Yuki's noodle stall?", "near the harbour in Osaka"),
      ("How long does Yuki simmer the broth?", "twelve hours"))),
    ("A landslide blocked the mountain road to Ravello after two days of heavy rain. Buses are taking a longer "
     "route along the coast.",
     (("What blocked the mountain road?", "A landslide"),
      ("Which route are buses taking?", "a longer route along the coast"))),
    ("The basketball team signed a new centre from Lithuania. He is two metres and eighteen centimetres tall.",
     (("Where is the new centre from?", "Lithuania"),
      ("How tall is the new centre?", "two metres and eighteen centimetres"))),
    ("The headphones block outside noise with six small microphones. A full charge gives thirty hours of music.",
     (("How do the headphones block outside noise?", "with six small microphones"),
      ("How much music does a full charge give?", "thirty hours"))),
    ("Peter repairs clocks in a narrow shop behind the cathedral. His oldest customer brought in a clock made in "
     "1790.",
     (("Where is Peter's shop?", "behind the cathedral"),
      ("When was the oldest clock made?", "1790"))),
    ("Porridge is made by cooking oats slowly in milk or water. In Scotland it is traditionally eaten with a pinch "
     "of salt.",
     (("What is porridge made from?", "oats"),
      ("How is porridge traditionally eaten in Scotland?", "with a pinch of salt"))),
    ("The ice hockey final went to a penalty shootout. The visiting goalkeeper saved four shots and was named "
     "player of the match.",
     (("How was the ice hockey final decided?", "a penalty shootout"),
      ("How many shots did the visiting goalkeeper save?", "four shots"))),
    ("A dust storm from the Sahara turned the sky orange over southern Spain. Cars were covered in a thin layer of "
     "red sand.",
     (("Where did the dust storm come from?", "the Sahara"),
      ("What colour did the sky turn?", "orange"))),
    ("The city council plans to plant ten thousand trees along its main roads. The work will start next autumn and "
     "cost about two million pounds.",
     (("How many trees does the council plan to plant?", "ten thousand trees"),
      ("How much will the work cost?", "about two million pounds"))),
    ("The camera app can remove people from the background of a photo. It runs entirely on the phone, so no "
     "pictures are uploaded.",
     (("What can the camera app remove?", "people from the background of a photo"),
      ("Where does the app run?", "entirely on the phone"))),
    ("Hannah walked the coast path from Minehead to Poole in eight weeks. She raised money for a hospice in her "
     "home town.",
     (("How long did Hannah's walk take?", "eight weeks"),
      ("Who did Hannah raise money for?", "a hospice in her home town"))),
    ("The cheese is made in the mountains of Savoie from the milk of cows that graze on summer pastures. It is aged "
     "for at least four months.",
     (("Where is the cheese made?", "in the mountains of Savoie"),
      ("How long is the cheese aged?", "at least four months"))),
    ("The sailing regatta was postponed because there was no wind at all on Saturday. The first race will now be "
     "held on Sunday afternoon.",
     (("Why was the regatta postponed?", "because there was no wind at all"),
      ("When will the first race be held?", "on Sunday afternoon"))),
    ("Thick ice formed on the canal for the first time in twenty years. Hundreds of people went skating before the "
     "thaw began.",
     (("Where did thick ice form?", "on the canal"),
      ("What did hundreds of people do?", "went skating"))),
    ("The startup builds sensors that warn farmers when the soil is too dry. Its first customers were vineyards in "
     "California.",
     (("What do the startup's sensors warn farmers about?", "when the soil is too dry"),
      ("Who were the first customers?", "vineyards in California"))),
    ("The old cinema on Bridge Road was turned into a climbing centre. Its tallest wall is fifteen metres high.",
     (("What was the old cinema turned into?", "a climbing centre"),
      ("How high is the tallest wall?", "fifteen metres"))),
    ("Mr Haddad has taught the school orchestra for twenty-two years. This summer he will retire and move to "
     "Beirut.",
     (("How long has Mr Haddad taught the orchestra?", "twenty-two years"),
      ("Where will Mr Haddad move?", "Beirut"))),
    ("Kimchi is made by fermenting cabbage with chilli, garlic and ginger. Many Korean families make a large batch "
     "in late autumn.",
     (("What vegetable is fermented to make kimchi?", "cabbage"),
      ("When do many Korean families make kimchi?", "in late autumn"))),
    ("The women's rugby team beat France by three points in Dublin. The winning try came in the last minute.",
     (("Who did the women's rugby team beat?", "France"),
      ("When did the winning try come?", "in the last minute"))),
    ("A warm front will bring drizzle and low cloud to the hills on Friday. The weekend should be dry but cold.",
     (("What will the warm front bring?", "drizzle and low cloud"),
      ("What will the weekend be like?", "dry but cold"))),
    ("The electric ferry crosses the fjord thirty times a day. Its batteries are charged at each end of the "
     "crossing in ten minutes.",
     (("How often does the electric ferry cross the fjord?", "thirty times a day"),
      ("How long does charging take?", "ten minutes"))),
    ("Grace found an old map of the town in her grandmother's attic. It showed a windmill where the supermarket "
     "now stands.",
     (("Where did Grace find the map?", "in her grandmother's attic"),
      ("What did the map show?", "a windmill"))),
    ("The restaurant grows its own herbs on the roof. Its set lunch of three courses costs twenty-five dollars.",
     (("Where does the restaurant grow its herbs?", "on the roof"),
      ("How much does the set lunch cost?", "twenty-five dollars"))),
    ("The cross-country race was held in deep mud on the racecourse at Aintree. Only forty of the sixty runners "
     "finished.",
     (("Where was the cross-country race held?", "on the racecourse at Aintree"),
      ("How many runners finished?", "Only forty"))),
    ("The power cut began at seven in the evening and lasted until midnight. A fallen tree had brought down a "
     "cable.",
     (("When did the power cut begin?", "at seven in the evening"),
      ("What brought down the cable?", "A fallen tree"))),
    ("The translation software now understands Welsh and Basque. It was trained on recordings made by volunteers.",
     (("Which languages does the software now understand?", "Welsh and Basque"),
      ("Who made the recordings?", "volunteers"))),
    ("Ravi opened a bookshop that sells only second-hand travel books. It is in a former bank on the high street.",
     (("What does Ravi's bookshop sell?", "second-hand travel books"),
      ("What was the building before?", "a former bank"))),
    ("Apples picked in September keep for months in a cool, dark cellar. Bruised fruit should be eaten first.",
     (("Where do apples keep for months?", "in a cool, dark cellar"),
      ("Which fruit should be eaten first?", "Bruised fruit"))),
    ("The snooker final lasted until one in the morning. The champion won by eighteen frames to fifteen.",
     (("Until when did the snooker final last?", "one in the morning"),
      ("What was the final score?", "eighteen frames to fifteen"))),
    ("Spring tides flooded the promenade at high water on Wednesday. The council put sandbags outside the cafés.",
     (("What flooded the promenade?", "Spring tides"),
      ("Where did the council put sandbags?", "outside the cafés"))),
    ("The drone delivers medicine to islands that have no doctor. Each flight carries up to two kilograms.",
     (("What does the drone deliver?", "medicine"),
      ("How much can each flight carry?", "up to two kilograms"))),
)


@dataclass(frozen=True)
class Question:
    """A question on a context and its answer, a span of the context starting at character ``start``."""

    question: str
    context: str
    answer: str

    @property
    def start(self) -> int:
        return self.context.index(self.answer)

    @property
    def end(self) -> int:
        """The character after the answer."""
        return self.start + len(self.answer)


def split(name: str) -> list[Question]:
    """The questions of one split (``train``, ``evaluation``, ``calibration``, ``golden``), in context order."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; choose one of: {', '.join(sorted(set(SPLITS)))}")
    chosen = [entry for i, entry in enumerate(CONTEXTS) if SPLITS[i % len(SPLITS)] == name]
    chosen += {"train": MORE_TRAIN, "evaluation": MORE_EVALUATION}.get(name, ())
    return [Question(question, context, answer) for context, pairs in chosen for question, answer in pairs]
